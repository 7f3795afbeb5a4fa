"""The hardware boundary: serial ports, PPS, GPIO, audio, udev (imported as ``stratum1.hw``)."""
