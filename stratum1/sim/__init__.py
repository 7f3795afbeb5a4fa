"""Virtual-time simulation: a world with true time in which the real core runs."""
