#!/usr/bin/env python3
"""Turn a Raspberry Pi OS root (and its boot partition) into a GPS time server, idempotently.

Used by the pi-gen stage (image/stage-stratum1) at image build time and installed into the image
as /usr/local/sbin/stratum1-pi-setup for use on a running Pi. Standard library only: it runs
with the target's own python3, before or without stratum1's venv.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import select
import shutil
import sys
import termios
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BEGIN = "# BEGIN stratum1 (stratum1-pi-setup rewrites this block; edit its options instead)"
END = "# END stratum1"
DISABLED = "#stratum1-pi-setup: "
CONFIG_MARK = "# stratum1-pi-setup sha256="
HAT_RULES = "etc/udev/rules.d/61-stratum1-pi-hat.rules"
CHECK_UNIT = "stratum1-pi-check.service"
INSTALLED_AS = "usr/local/sbin/stratum1-pi-setup"
STRATUM1_UNIT = "stratum1.service"
UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")

# Pi models whose PL011 (the good UART) drives Bluetooth unless told otherwise.
BT_MODELS = ("pi3", "pi4", "pi0w", "pi02")
# Kernel command-line words that put a console or debugger on the GPS UART, and the
# leftover parameter of the pre-overlay PPS driver (it breaks pps-gpio on newer kernels).
_CMDLINE_DROP = re.compile(
    r"^(console|kgdboc)=(serial0|serial1|ttyAMA0|ttyS0)(,.*)?$|^bcm2708\.pps_gpio_pin=.*$"
)
# Active config.txt lines that the managed block replaces.
_CONFIG_CONFLICTS = re.compile(
    r"^\s*(dtoverlay\s*=\s*(pps-gpio|disable-bt|miniuart-bt|pi3-disable-bt|pi3-miniuart-bt)\b"
    r"|enable_uart\s*=|dtparam\s*=\s*uart0\s*=|core_freq\s*=)"
)


class SetupError(Exception):
    """A precondition is not met (missing boot files, stratum1 not installed, bad option)."""


@dataclass(frozen=True)
class Options:
    """What the GPS HAT looks like and how the image should treat it."""

    pps_gpio: int = 18
    pps: str = "kernel"  # "kernel": pps-gpio overlay, /dev/pps0; "gpiod": libgpiod edges
    bluetooth: str = "disable"  # "disable": dtoverlay=disable-bt; "miniuart": miniuart-bt
    baud: int = 9600
    time2: float = 0.2
    pool: str | None = "2.debian.pool.ntp.org"
    force_config: bool = False
    enable: bool = True

    def validate(self) -> None:
        if not 2 <= self.pps_gpio <= 27:
            raise SetupError(f"--pps-gpio {self.pps_gpio}: header GPIOs are 2..27")
        if self.pps_gpio in (14, 15):
            raise SetupError("--pps-gpio 14/15 are the UART's TX/RX: the GPS data needs them")
        if self.pps not in ("kernel", "gpiod"):
            raise SetupError(f"--pps {self.pps!r}: choose kernel or gpiod")
        if self.bluetooth not in ("disable", "miniuart"):
            raise SetupError(f"--bluetooth {self.bluetooth!r}: choose disable or miniuart")
        if self.baud not in (4800, 9600, 19200, 38400, 57600, 115200):
            raise SetupError(f"--baud {self.baud}: not a rate the NMEA driver supports")
        if not 0.0 <= self.time2 < 1.0:
            raise SetupError(f"--time2 {self.time2}: the serial delay is in [0, 1) s")


# ---------------------------------------------------------------------------------------------
# Pure text edits


def managed_block(opts: Options) -> list[str]:
    """The config.txt lines stratum1 owns, between BEGIN and END."""
    lines = [BEGIN, "[all]", "enable_uart=1"]
    if opts.pps == "kernel":
        lines.append(f"dtoverlay=pps-gpio,gpiopin={opts.pps_gpio}")
    # Pi 5: the header UART is uart0 (ttyAMA0), separate from Bluetooth; serial0 is the debug port.
    lines += ["[pi5]", "dtparam=uart0=on"]
    for model in BT_MODELS:
        lines.append(f"[{model}]")
        if opts.bluetooth == "disable":
            lines.append("dtoverlay=disable-bt")
        else:
            # The mini UART's baud rate follows the core clock: pin it.
            lines += ["dtoverlay=miniuart-bt", "core_freq=250"]
    lines += ["[all]", END]
    return lines


def edit_config_txt(text: str, opts: Options) -> str:
    """config.txt with the managed block (re)written at the end and conflicting lines disabled."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.strip() == BEGIN or line.startswith("# BEGIN stratum1"):
            inside = True
            continue
        if inside:
            if line.strip() == END:
                inside = False
            continue
        if _CONFIG_CONFLICTS.match(line):
            line = DISABLED + line
        out.append(line)
    if inside:
        raise SetupError("config.txt has a stratum1 BEGIN line without its END line: fix it by hand")
    while out and not out[-1].strip():
        out.pop()
    if out:
        out.append("")
    out += managed_block(opts)
    return "\n".join(out) + "\n"


def edit_cmdline_txt(text: str) -> str:
    """cmdline.txt without a console or debugger on the GPS UART: one line, as the firmware reads it."""
    lines = text.splitlines()
    first = lines[0] if lines else ""
    words = [w for w in first.split() if not _CMDLINE_DROP.match(w)]
    return " ".join(words) + "\n"


def serial_console_words(text: str) -> list[str]:
    """The words of cmdline.txt that would fight the GPS for the UART."""
    first = text.splitlines()[0] if text.strip() else ""
    return [w for w in first.split() if _CMDLINE_DROP.match(w)]


def ntp_conf_body(opts: Options) -> str:
    """The ntp.conf for a typical GPS HAT: NMEA on the header UART, PPS on one GPIO."""
    ppspath = "/dev/pps0" if opts.pps == "kernel" else f"gpio:GPIO{opts.pps_gpio}"
    pps_how = (
        f"/dev/pps0 (dtoverlay=pps-gpio,gpiopin={opts.pps_gpio} in config.txt)"
        if opts.pps == "kernel"
        else f"GPIO{opts.pps_gpio} through libgpiod (no pps-gpio overlay)"
    )
    lines = [
        "# /etc/stratum1/ntp.conf for a Raspberry Pi GPS HAT, written by stratum1-pi-setup.",
        "# NMEA on the header UART (/dev/gps0 -> ttyAMA0, GPIO14/15), PPS on " + pps_how + ".",
        "# Check an edit with: /opt/stratum1/venv/bin/stratum1 config check /etc/stratum1/ntp.conf",
        "# Once edited, stratum1-pi-setup keeps this file (use --force-config to replace it).",
        "",
        "driftfile /var/lib/stratum1/ntp.drift",
        "leapfile /usr/share/zoneinfo/leap-seconds.list",
        "statsdir /var/log/stratum1/",
        "statistics loopstats peerstats clockstats",
        "filegen loopstats file loopstats type day enable",
        "filegen peerstats file peerstats type day enable",
        "filegen clockstats file clockstats type day enable",
        "",
        "# The HAT: RMC sentences (mode 1) at the given baud, PPS paired inside the driver (flag1).",
        "# time2 (serial delay) matters only while PPS is missing; `stratum1 drivers list` suggests it.",
        f"refclock nmea unit 0 path /dev/gps0 ppspath {ppspath} baud {opts.baud} mode 1 "
        f"time2 {opts.time2:g} flag1 1 refid GPS prefer minpoll 4 maxpoll 4",
        "",
    ]
    if opts.pool:
        lines += [
            "# Network servers: time before the first fix (no RTC on most Pis) and a check on the GPS.",
            f"pool {opts.pool} iburst",
            "",
        ]
    lines += [
        "# Serve time to everyone; no configuration, peering or queries from the network.",
        "restrict default kod limited nomodify nopeer noquery notrap",
        "restrict -6 default kod limited nomodify nopeer noquery notrap",
    ]
    if opts.pool:
        lines.append("restrict source kod limited nomodify noquery notrap")
    lines += ["# ntpq and stratum1 peers from this host.", "restrict 127.0.0.1", "restrict ::1"]
    return "\n".join(lines) + "\n"


def ntp_conf_text(opts: Options) -> str:
    """ntp_conf_body with the marker line that tells an untouched file from an edited one."""
    body = ntp_conf_body(opts)
    return body + CONFIG_MARK + hashlib.sha256(body.encode()).hexdigest() + "\n"


def is_untouched(text: str) -> bool:
    """True if text is an ntp.conf this script wrote and nobody edited since."""
    head, sep, tail = text.rpartition(CONFIG_MARK)
    if not sep or "\n" in tail.rstrip("\n"):
        return False
    return hashlib.sha256(head.encode()).hexdigest() == tail.strip()


HAT_RULES_TEXT = """\
# Written by stratum1-pi-setup: the GPS HAT on the header UART is /dev/gps0 (the NMEA driver's
# default for unit 0). With the config.txt block, ttyAMA0 is the PL011 on GPIO14/15 on every
# model: disable-bt (Pi 3/4/Zero W/Zero 2 W) or uart0 (Pi 5, where serial0 is the debug port).
KERNEL=="ttyAMA0", SUBSYSTEM=="tty", SYMLINK+="gps0", GROUP="dialout", MODE="0660"
"""

CHECK_UNIT_TEXT = """\
# Written by stratum1-pi-setup: at boot, before stratum1 opens the GPS, check the UART, the GPS
# sentences and the PPS pulses once, and say what is wrong in the journal:
#   journalctl -u stratum1-pi-check
[Unit]
Description=stratum1 GPS HAT check (UART free, NMEA arriving, PPS pulsing)
After=systemd-udev-trigger.service
Before=stratum1.service

[Service]
Type=oneshot
# A failed check must not keep the time server from starting.
ExecStart=-/usr/local/sbin/stratum1-pi-setup check --seconds 5
TimeoutStartSec=30

[Install]
WantedBy=multi-user.target
"""


# ---------------------------------------------------------------------------------------------
# Applying to a root directory


@dataclass
class Changes:
    """What apply() did, for the log and for tests."""

    done: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def find_boot(root: Path, boot: Path | None = None) -> Path:
    """The boot partition: /boot/firmware since bookworm, /boot before."""
    if boot is not None:
        candidates = [boot]
    else:
        candidates = [root / "boot/firmware", root / "boot"]
    for cand in candidates:
        if (cand / "config.txt").is_file() and (cand / "cmdline.txt").is_file():
            return cand
    raise SetupError(
        "no config.txt and cmdline.txt in " + " or ".join(str(c) for c in candidates)
        + ": is this a Raspberry Pi OS root? (give --boot)"
    )


def _write_if_changed(path: Path, text: str, changes: Changes, what: str, mode: int = 0o644) -> None:
    old = path.read_text() if path.exists() else None
    if old == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".stratum1-tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)  # never a torn boot file
    changes.done.append(what)


def _symlink(link: Path, target: str, changes: Changes, what: str) -> None:
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.exists() and not link.is_symlink():
        changes.warnings.append(f"{link} is a real file, not replaced: {what} not done")
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target)
    changes.done.append(what)


def mask(root: Path, unit: str, changes: Changes) -> None:
    _symlink(root / "etc/systemd/system" / unit, "/dev/null", changes, f"masked {unit}")


def find_unit(root: Path, unit: str) -> str | None:
    """The unit's path inside the root (as the target system sees it), or None."""
    for d in UNIT_DIRS:
        if (root / d / unit).is_file():
            return "/" + d + "/" + unit
    return None


def enable(root: Path, unit: str, target: str, changes: Changes) -> None:
    """What `systemctl enable` does for a unit WantedBy=target, without systemd running."""
    where = find_unit(root, unit)
    if where is None:
        raise SetupError(
            f"{unit} is not installed under {root}: run scripts/install-service first"
        )
    _symlink(root / "etc/systemd/system" / f"{target}.wants" / unit, where, changes,
             f"enabled {unit}")


def apply(root: Path, opts: Options, boot: Path | None = None,
          self_path: Path | None = None) -> Changes:
    """Make root (a Raspberry Pi OS tree) a GPS time server; running it again changes nothing."""
    opts.validate()
    changes = Changes()
    bootdir = find_boot(root, boot)

    cfg = bootdir / "config.txt"
    _write_if_changed(cfg, edit_config_txt(cfg.read_text(), opts), changes,
                      f"{cfg}: UART, Bluetooth and PPS lines")
    cmd = bootdir / "cmdline.txt"
    old_cmd = cmd.read_text()
    dropped = serial_console_words(old_cmd)
    _write_if_changed(cmd, edit_cmdline_txt(old_cmd), changes,
                      f"{cmd}: removed {' '.join(dropped) or 'extra lines'}")

    # One program disciplines the clock; a login prompt on the GPS UART garbles its sentences.
    mask(root, "systemd-timesyncd.service", changes)
    for tty in ("serial0", "ttyAMA0", "ttyS0"):
        mask(root, f"serial-getty@{tty}.service", changes)
    if opts.bluetooth == "disable":
        mask(root, "hciuart.service", changes)  # it would attach Bluetooth to the GPS UART

    _write_if_changed(root / HAT_RULES, HAT_RULES_TEXT, changes, f"/{HAT_RULES}: /dev/gps0")

    conf = root / "etc/stratum1/ntp.conf"
    want = ntp_conf_text(opts)
    if not conf.exists() or is_untouched(conf.read_text()):
        _write_if_changed(conf, want, changes, "/etc/stratum1/ntp.conf for the GPS HAT")
    elif conf.read_text() != want:
        if opts.force_config:
            shutil.copy2(conf, conf.with_name("ntp.conf.orig"))
            _write_if_changed(conf, want, changes,
                              "/etc/stratum1/ntp.conf for the GPS HAT (old one: ntp.conf.orig)")
        else:
            _write_if_changed(conf.with_name("ntp.conf.pi-hat"), want, changes,
                              "/etc/stratum1/ntp.conf.pi-hat")
            changes.warnings.append(
                "kept your edited /etc/stratum1/ntp.conf; the GPS HAT version is ntp.conf.pi-hat"
            )

    if self_path is not None:
        dest = root / INSTALLED_AS
        text = self_path.read_text()
        _write_if_changed(dest, text, changes, f"/{INSTALLED_AS}", mode=0o755)
    _write_if_changed(root / "etc/systemd/system" / CHECK_UNIT, CHECK_UNIT_TEXT, changes,
                      f"/etc/systemd/system/{CHECK_UNIT}")
    if opts.enable:
        enable(root, STRATUM1_UNIT, "multi-user.target", changes)
        if (root / INSTALLED_AS).exists():
            enable(root, CHECK_UNIT, "multi-user.target", changes)
    return changes


# ---------------------------------------------------------------------------------------------
# Checking a running Pi


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not checked
    detail: str


def _baud_const(baud: int) -> int:
    return getattr(termios, f"B{baud}")


def read_nmea(device: Path, seconds: float, baud: int = 9600) -> tuple[int, int]:
    """(bytes, RMC sentences) read from device within seconds; raw 8N1 when it is a tty."""
    fd = os.open(device, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        if os.isatty(fd):
            attrs = termios.tcgetattr(fd)
            attrs[0] = 0  # iflag
            attrs[1] = 0  # oflag
            attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL
            attrs[3] = 0  # lflag: raw
            attrs[4] = attrs[5] = _baud_const(baud)
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        data = b""
        deadline = time.monotonic() + seconds
        while len(data) < 65536:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                if not os.isatty(fd):
                    break  # a plain file (tests): its end
                time.sleep(0.05)
                continue
            data += chunk
            if len(re.findall(rb"\$G[A-Z]RMC,", data)) >= 2:
                break
        return len(data), len(re.findall(rb"\$G[A-Z]RMC,", data))
    finally:
        os.close(fd)


def _pps_sequence(assert_file: Path) -> int | None:
    text = assert_file.read_text().strip()
    _, sep, seq = text.partition("#")
    return int(seq) if sep and seq.isdigit() else None


def check(root: Path, seconds: float = 5.0, boot: Path | None = None, serial: bool = True,
          sleep: Callable[[float], None] = time.sleep) -> list[Check]:
    """What works on this Pi: UART freed, services set, GPS sentences and PPS pulses arriving."""
    results: list[Check] = []
    try:
        bootdir = find_boot(root, boot)
    except SetupError as exc:
        return [Check("boot partition", False, str(exc))]
    words = serial_console_words((bootdir / "cmdline.txt").read_text())
    results.append(Check("UART free of a console", not words,
                         "yes" if not words else "cmdline.txt has " + " ".join(words)))
    cfg = (bootdir / "config.txt").read_text()
    pps_line = re.search(r"^dtoverlay=pps-gpio,gpiopin=(\d+)", cfg, re.M)
    results.append(Check("config.txt block", BEGIN in cfg,
                         "present" if BEGIN in cfg else "missing: run stratum1-pi-setup apply"))
    timesyncd = root / "etc/systemd/system/systemd-timesyncd.service"
    masked = timesyncd.is_symlink() and os.readlink(timesyncd) == "/dev/null"
    results.append(Check("systemd-timesyncd masked", masked, "yes" if masked else "no"))
    wants = root / "etc/systemd/system/multi-user.target.wants" / STRATUM1_UNIT
    results.append(Check("stratum1 enabled", wants.is_symlink(),
                         "yes" if wants.is_symlink() else "no: systemctl enable stratum1"))

    gps = root / "dev/gps0"
    if not gps.exists():
        results.append(Check("GPS on /dev/gps0", False,
                             "no /dev/gps0: UART not enabled (reboot after apply?) or rule missing"))
    elif not serial:
        results.append(Check("GPS on /dev/gps0", None, "present; not read (--no-serial)"))
    else:
        try:
            nbytes, rmc = read_nmea(gps, seconds)
        except OSError as exc:
            results.append(Check("GPS on /dev/gps0", False, f"cannot read: {exc}"))
        else:
            if rmc:
                detail = f"{rmc} RMC sentences in {nbytes} bytes"
            elif nbytes:
                detail = f"{nbytes} bytes but no RMC: wrong baud rate? (--baud)"
            else:
                detail = f"silent for {seconds:g} s: wiring (GPS TX to GPIO15, pin 10)? power?"
            results.append(Check("GPS on /dev/gps0", rmc > 0, detail))

    if pps_line is None:
        results.append(Check("PPS", None, "no pps-gpio overlay (gpiod mode): see stratum1 drivers list"))
    else:
        pin = pps_line.group(1)
        assert_file = root / "sys/class/pps/pps0/assert"
        if not assert_file.exists():
            results.append(Check("PPS on /dev/pps0", False,
                                 f"no /dev/pps0: overlay for GPIO{pin} not loaded (reboot?)"))
        else:
            first = _pps_sequence(assert_file)
            sleep(min(seconds, 2.5))
            second = _pps_sequence(assert_file)
            ok = first is not None and second is not None and second > first
            detail = (f"pulsing on GPIO{pin} ({second - first} edges)" if ok and first is not None
                      and second is not None
                      else f"no edges on GPIO{pin}: no fix yet (it can take 15 min), or PPS on another pin?")
            results.append(Check("PPS on /dev/pps0", ok, detail))
    return results


def format_checks(results: Sequence[Check]) -> str:
    mark = {True: "ok  ", False: "FAIL", None: "--  "}
    return "\n".join(f"{mark[c.ok]} {c.name}: {c.detail}" for c in results) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stratum1-pi-setup", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    a = sub.add_parser("apply", help="configure boot files, services and ntp.conf for a GPS HAT")
    a.add_argument("--root", default="/", help="the Raspberry Pi OS root to edit (default /)")
    a.add_argument("--boot", help="its boot partition (default ROOT/boot/firmware, else ROOT/boot)")
    a.add_argument("--pps-gpio", type=int, default=18, help="GPIO of the PPS line (default 18; Adafruit HAT: 4)")
    a.add_argument("--pps", choices=("kernel", "gpiod"), default="kernel",
                   help="kernel: pps-gpio overlay and /dev/pps0 (default); gpiod: edges via libgpiod")
    a.add_argument("--bluetooth", choices=("disable", "miniuart"), default="disable",
                   help="disable (default) or move Bluetooth to the mini UART")
    a.add_argument("--baud", type=int, default=9600, help="the receiver's baud rate (default 9600)")
    a.add_argument("--time2", type=float, default=0.2, help="NMEA serial delay, s (default 0.2)")
    a.add_argument("--pool", default="2.debian.pool.ntp.org", help="NTP pool for a second opinion")
    a.add_argument("--no-pool", action="store_true", help="GPS only, no network servers")
    a.add_argument("--force-config", action="store_true",
                   help="replace an edited /etc/stratum1/ntp.conf (kept as ntp.conf.orig)")
    a.add_argument("--no-enable", action="store_true", help="do not enable the stratum1 service")
    a.add_argument("--validate-only", action="store_true", help="check the options, change nothing")
    c = sub.add_parser("check", help="check the UART, services, GPS sentences and PPS pulses")
    c.add_argument("--root", default="/", help=argparse.SUPPRESS)
    c.add_argument("--boot", help="the boot partition (default /boot/firmware, else /boot)")
    c.add_argument("--seconds", type=float, default=5.0, help="how long to listen (default 5)")
    c.add_argument("--no-serial", action="store_true",
                   help="do not read /dev/gps0 (reading it while stratum1 runs steals its sentences)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    root = Path(args.root)
    boot = Path(args.boot) if args.boot else None
    try:
        if args.command == "apply":
            opts = Options(pps_gpio=args.pps_gpio, pps=args.pps, bluetooth=args.bluetooth,
                           baud=args.baud, time2=args.time2,
                           pool=None if args.no_pool else args.pool,
                           force_config=args.force_config, enable=not args.no_enable)
            if args.validate_only:
                opts.validate()
                return 0
            changes = apply(root, opts, boot, self_path=Path(__file__).resolve())
            for line in changes.done:
                print(f"stratum1-pi-setup: {line}")
            for line in changes.warnings:
                print(f"stratum1-pi-setup: WARNING: {line}", file=sys.stderr)
            if not changes.done:
                print("stratum1-pi-setup: nothing to change")
            elif any("config.txt" in d or "cmdline.txt" in d for d in changes.done):
                print("stratum1-pi-setup: reboot for the boot changes to take effect")
            return 0
        results = check(root, args.seconds, boot, serial=not args.no_serial)
        sys.stdout.write(format_checks(results))
        return 0 if all(c.ok is not False for c in results) else 1
    except SetupError as exc:
        print(f"stratum1-pi-setup: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"stratum1-pi-setup: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
