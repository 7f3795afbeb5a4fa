"""stratum1: a stratum-1 NTP time server built around a reference-clock driver framework."""

__version__ = "0.1.0"
