"""The reference-clock framework: driver base class, registry, and per-unit sample reduction."""
