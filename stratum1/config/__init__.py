"""ntp.conf: parsing into a typed, immutable configuration, and checking it.

``parser`` (parse_text, parse_file, load, reload, with_overrides) is the entry point; ``model``
holds the frozen Config; ``diagnostics`` the file:line messages; ``summary`` the readable report.
"""
