"""What ntpd had and this project does not carry: driver types, directives and options, each with
the message that says what it was and what to use instead."""

from __future__ import annotations

from typing import Literal

#: Classic ntpd driver types: type -> (ntpsec name or "", description).
CLASSIC_DRIVERS: dict[int, tuple[str, str]] = {
    1: ("local", "undisciplined local clock"),
    2: ("", "Trak 8820 GPS receiver"),
    3: ("", "PSTI/Traconex 1020 WWV/WWVH receiver"),
    4: ("spectracom", "Spectracom WWVB/GPS receivers"),
    5: ("truetime", "TrueTime GPS/GOES/OMEGA receivers"),
    6: ("", "IRIG audio decoder (removed by ntpsec)"),
    7: ("", "Radio CHU audio demodulator/decoder"),
    8: ("generic", "generic reference driver (PARSE: DCF77, Meinberg, RAWDCF, ...)"),
    9: ("", "Magnavox MX4200 GPS receiver"),
    10: ("", "Austron 2200A/2201A GPS receivers"),
    11: ("arbiter", "Arbiter 1088A/B GPS receiver"),
    12: ("", "KSI/Odetics TPRO/S IRIG interface"),
    13: ("", "Leitch CSD 5300 master clock controller"),
    14: ("", "EES M201 MSF receiver"),
    15: ("", "reserved (TrueTime GPS/GOES)"),
    16: ("", "Bancomm GPS/IRIG receiver"),
    17: ("", "Datum Precision Time System"),
    18: ("modem", "NIST/USNO/PTB modem time services (ACTS)"),
    19: ("", "Heath WWV/WWVH receiver"),
    20: ("nmea", "generic NMEA GPS receiver"),
    21: ("", "TrueTime GPS-VME interface"),
    22: ("pps", "PPS clock discipline (ATOM)"),
    23: ("", "PTB modem time service (merged into ACTS)"),
    24: ("", "USNO modem time service (merged into ACTS)"),
    25: ("", "unused (formerly TrueTime generic)"),
    26: ("hpgps", "HP 58503A GPS receiver"),
    27: ("", "Arcron MSF receiver"),
    28: ("shm", "shared memory driver"),
    29: ("trimble", "Trimble Navigation Palisade/Thunderbolt GPS"),
    30: ("oncore", "Motorola UT Oncore GPS"),
    31: ("", "Rockwell Jupiter GPS"),
    32: ("", "Chrono-log K-series WWVB receiver"),
    33: ("", "Dumb Clock"),
    34: ("", "Ultralink WWVB receivers"),
    35: ("", "Conrad parallel port radio clock"),
    36: ("", "Radio WWV/H audio demodulator/decoder"),
    37: ("", "Forum Graphic GPS dating station"),
    38: ("", "hopf GPS/DCF77 6021/komp serial line"),
    39: ("", "hopf GPS/DCF77 6039 PCI bus"),
    40: ("jjy", "JJY receivers"),
    41: ("", "TrueTime 560 IRIG-B decoder"),
    42: ("zyfer", "Zyfer GPStarplus receiver"),
    43: ("", "RIPE NCC interface for Trimble Palisade"),
    44: ("neoclock", "NeoClock4X DCF77/TDF receiver"),
    45: ("", "Spectracom TSYNC PCI"),
    46: ("gpsd", "GPSD JSON client"),
}

#: Types this project deliberately does not carry (hardware nobody sells any more, audio IRIG).
RETIRED_TYPES = frozenset({2, 3, 5, 6, 7, 9, 10, 11, 12, 16, 17, 18, 19, 23, 24, 25, 26, 27}) | (
    frozenset(range(29, 46))
)

#: ntpsec driver name -> classic type number.
NAME_TO_TYPE: dict[str, int] = {name: t for t, (name, _) in CLASSIC_DRIVERS.items() if name}


def missing_driver_message(type_: int) -> str:
    """Why refclock type ``type_`` cannot be configured (it is not in the registry)."""
    if type_ not in CLASSIC_DRIVERS:
        return f"unknown refclock driver type {type_}"
    name, desc = CLASSIC_DRIVERS[type_]
    label = f"type {type_} ({desc}{', ntpsec name ' + name if name else ''})"
    if type_ in RETIRED_TYPES:
        return f"driver not available: {label} is not carried by this server"
    return f"driver not available: {label} is not installed"


Severity = Literal["error", "warning"]

_AUTOKEY = "Autokey is not supported (it is broken, RFC 8915); use NTS or symmetric keys (keys, trustedkey, server ... key N)"
_MODE7 = "mode 7 (ntpdc) is not supported; use ntpq (mode 6) with controlkey for remote queries"

#: Directives recognised but not carried: name -> (severity, message).
RETIRED_DIRECTIVES: dict[str, tuple[Severity, str]] = {
    "crypto": ("error", _AUTOKEY),
    "revoke": ("warning", "Autokey parameter ignored: " + _AUTOKEY),
    "automax": ("warning", "Autokey parameter ignored: " + _AUTOKEY),
    "requestkey": ("warning", "ignored: " + _MODE7),
    "trap": ("warning", "ignored: mode-6 traps are not supported; use the statistics files or poll with ntpq"),
    "phone": ("warning", "ignored: the modem (ACTS) driver is not carried; use a GPS receiver or network servers"),
    "calldelay": ("warning", "ignored: the modem (ACTS) driver is not carried"),
    "saveconfigdir": ("warning", "ignored: saving the configuration over mode 6 is not supported"),
    "ntpsigndsocket": ("warning", "ignored: MS-SNTP signing is not supported"),
    "mdnstries": ("warning", "ignored: mDNS registration is not supported"),
}

#: Association options recognised but not carried: option -> (severity, message).
RETIRED_OPTIONS: dict[str, tuple[Severity, str]] = {
    "autokey": ("error", _AUTOKEY),
    "ident": ("error", _AUTOKEY),
}

MODE7_MESSAGE = _MODE7
