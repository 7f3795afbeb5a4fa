"""ntp.conf: parsing into a typed, immutable configuration, and checking it."""
