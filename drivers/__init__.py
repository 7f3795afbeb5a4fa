"""Reference-clock drivers, one module per driver type (imported as ``stratum1.drivers``)."""
