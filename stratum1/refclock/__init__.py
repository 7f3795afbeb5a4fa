"""The reference-clock framework: driver base class (driver.py), registry, and the per-unit
runtime (unit.py: open/retry, samples, PPS numbering, median reduction, reach, status)."""
