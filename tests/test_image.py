"""Tests for the Raspberry Pi image recipe (image/): the customisation run against a fake boot
partition and root in tmp, the check command, the pi-gen preparation, and shell syntax."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "image"


def _load():
    spec = importlib.util.spec_from_file_location("stratum1_image_pisetup", IMAGE / "pisetup.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


pisetup = _load()

# Raspberry Pi OS bookworm's files, as pi-gen leaves them (abridged config.txt).
CONFIG_TXT = """\
# For more options and information see
# http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
display_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
arm_boost=1

[cm4]
otg_mode=1

[all]
dtoverlay=pps-gpio,gpiopin=4
enable_uart=0
"""
CMDLINE_TXT = (
    "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 "
    "fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n"
)


def make_root(tmp_path: Path) -> Path:
    """A fake Raspberry Pi OS root after scripts/install-service --root (unit and rules in place)."""
    root = tmp_path / "root"
    boot = root / "boot/firmware"
    boot.mkdir(parents=True)
    (boot / "config.txt").write_text(CONFIG_TXT)
    (boot / "cmdline.txt").write_text(CMDLINE_TXT)
    for src, dest in [
        ("systemd/stratum1.service", "etc/systemd/system/stratum1.service"),
        ("systemd/udev/60-stratum1-gps.rules", "etc/udev/rules.d/60-stratum1-gps.rules"),
        ("systemd/ntp.conf.example", "etc/stratum1/ntp.conf"),
    ]:
        (root / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / src, root / dest)
    # Raspberry Pi OS enables timesyncd.
    wants = root / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True)
    (wants / "systemd-timesyncd.service").symlink_to("/lib/systemd/system/systemd-timesyncd.service")
    return root


def active(text: str, word: str) -> list[str]:
    return [ln for ln in text.splitlines() if word in ln and not ln.lstrip().startswith("#")]


def config_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stratum1", "config", "check", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_apply_twice_gives_a_gps_time_server_root(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    opts = pisetup.Options(force_config=True)
    first = pisetup.apply(root, opts, self_path=IMAGE / "pisetup.py")
    boot = root / "boot/firmware"
    after_first = {p: p.read_text() for p in (boot / "config.txt", boot / "cmdline.txt",
                                              root / "etc/stratum1/ntp.conf")}
    second = pisetup.apply(root, opts, self_path=IMAGE / "pisetup.py")
    assert first.done and not second.done and not second.warnings
    for path, text in after_first.items():
        assert path.read_text() == text, f"{path} changed on the second run"

    config = (boot / "config.txt").read_text()
    assert active(config, "pps-gpio") == ["dtoverlay=pps-gpio,gpiopin=18"]
    assert active(config, "enable_uart") == ["enable_uart=1"]
    assert "#stratum1-pi-setup: dtoverlay=pps-gpio,gpiopin=4" in config
    assert "#stratum1-pi-setup: enable_uart=0" in config
    assert config.count(pisetup.BEGIN) == 1
    assert "[pi4]\ndtoverlay=disable-bt" in config and "[pi5]\ndtparam=uart0=on" in config
    assert config.rstrip().endswith("[all]\n" + pisetup.END)
    assert "dtoverlay=vc4-kms-v3d" in config and "[cm4]\notg_mode=1" in config

    cmdline = (boot / "cmdline.txt").read_text()
    assert "console=serial0,115200" not in cmdline
    assert cmdline == CMDLINE_TXT.replace("console=serial0,115200 ", "")
    assert cmdline.count("\n") == 1

    etc = root / "etc/systemd/system"
    want = etc / "multi-user.target.wants/stratum1.service"
    assert want.is_symlink() and os.readlink(want) == "/etc/systemd/system/stratum1.service"
    assert os.readlink(etc / "systemd-timesyncd.service") == "/dev/null"
    for unit in ("serial-getty@serial0.service", "serial-getty@ttyAMA0.service",
                 "hciuart.service"):
        assert os.readlink(etc / unit) == "/dev/null"
    assert (etc / "multi-user.target.wants/stratum1-pi-check.service").is_symlink()
    assert (etc / "stratum1-pi-check.service").read_text() == pisetup.CHECK_UNIT_TEXT
    helper = root / "usr/local/sbin/stratum1-pi-setup"
    assert os.access(helper, os.X_OK)
    assert helper.read_text() == (IMAGE / "pisetup.py").read_text()

    rules = root / "etc/udev/rules.d"
    assert (rules / "60-stratum1-gps.rules").is_file()
    assert 'KERNEL=="ttyAMA0"' in (rules / "61-stratum1-pi-hat.rules").read_text()
    assert 'SYMLINK+="gps0"' in (rules / "61-stratum1-pi-hat.rules").read_text()

    conf = root / "etc/stratum1/ntp.conf"
    text = conf.read_text()
    assert pisetup.is_untouched(text)
    assert (root / "etc/stratum1/ntp.conf.orig").read_text() == (
        REPO / "systemd/ntp.conf.example").read_text()
    for needle in ("path /dev/gps0", "ppspath /dev/pps0", "prefer", "driftfile /var/lib/stratum1/",
                   "leapfile /usr/share/zoneinfo/leap-seconds.list", "statsdir /var/log/stratum1/",
                   "restrict default kod limited nomodify nopeer noquery notrap",
                   "restrict -6 default", "restrict 127.0.0.1", "restrict ::1"):
        assert needle in text
    result = config_check(conf)
    assert result.returncode == 0, result.stderr
    assert "127.127.20.0 nmea(0)" in result.stdout
    assert "ppspath /dev/pps0" in result.stdout and "prefer" in result.stdout


def test_gpiod_and_miniuart_variant(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    opts = pisetup.Options(pps="gpiod", pps_gpio=4, bluetooth="miniuart", baud=38400,
                           pool=None, force_config=True)
    pisetup.apply(root, opts)
    config = (root / "boot/firmware/config.txt").read_text()
    # The line is opened through libgpiod: the overlay would hold it busy.
    assert active(config, "pps-gpio") == []
    assert "[pi3]\ndtoverlay=miniuart-bt\ncore_freq=250" in config
    assert active(config, "disable-bt") == []
    etc = root / "etc/systemd/system"
    assert not (etc / "hciuart.service").exists()  # Bluetooth still needs it on the mini UART
    text = (root / "etc/stratum1/ntp.conf").read_text()
    assert "ppspath gpio:GPIO4" in text and "baud 38400" in text
    assert "pool" not in text and "restrict source" not in text
    result = config_check(root / "etc/stratum1/ntp.conf")
    assert result.returncode == 0, result.stderr
    # No check helper was installed, so its unit is written but not enabled.
    assert not (etc / "multi-user.target.wants/stratum1-pi-check.service").exists()


def test_changed_options_rewrite_an_untouched_config(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    pisetup.apply(root, pisetup.Options(force_config=True))
    changes = pisetup.apply(root, pisetup.Options(pps_gpio=4))
    assert "ppspath /dev/pps0" in (root / "etc/stratum1/ntp.conf").read_text()
    config = (root / "boot/firmware/config.txt").read_text()
    assert active(config, "pps-gpio") == ["dtoverlay=pps-gpio,gpiopin=4"]
    assert not changes.warnings


def test_an_edited_config_is_kept(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    changes = pisetup.apply(root, pisetup.Options())  # the installer's example is there
    conf = root / "etc/stratum1/ntp.conf"
    assert conf.read_text() == (REPO / "systemd/ntp.conf.example").read_text()
    assert changes.warnings and "ntp.conf.pi-hat" in changes.warnings[0]
    assert pisetup.is_untouched((root / "etc/stratum1/ntp.conf.pi-hat").read_text())

    pisetup.apply(root, pisetup.Options(force_config=True))
    conf.write_text(conf.read_text().replace("time2 0.2", "time2 0.141"))
    assert not pisetup.is_untouched(conf.read_text())
    pisetup.apply(root, pisetup.Options(baud=115200))
    assert "time2 0.141" in conf.read_text()


def test_config_txt_edit_is_idempotent_on_empty_and_with_block_alone() -> None:
    opts = pisetup.Options()
    once = pisetup.edit_config_txt("", opts)
    assert pisetup.edit_config_txt(once, opts) == once
    assert once.startswith(pisetup.BEGIN)
    with pytest.raises(pisetup.SetupError, match="without its END"):
        pisetup.edit_config_txt(pisetup.BEGIN + "\nenable_uart=1\n", opts)


@pytest.mark.parametrize("line, kept", [
    ("console=ttyAMA0,115200 console=tty1 root=/dev/mmcblk0p2", "console=tty1 root=/dev/mmcblk0p2"),
    ("console=ttyS0,115200 kgdboc=serial0,115200 bcm2708.pps_gpio_pin=18 rootwait", "rootwait"),
    ("console=tty1 console=serial0", "console=tty1"),
    ("", ""),
])
def test_cmdline_edit(line: str, kept: str) -> None:
    assert pisetup.edit_cmdline_txt(line + "\n") == kept + "\n"


def test_missing_boot_files_and_missing_unit_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(pisetup.SetupError, match="config.txt and cmdline.txt"):
        pisetup.apply(tmp_path, pisetup.Options())
    root = make_root(tmp_path)
    (root / "etc/systemd/system/stratum1.service").unlink()
    with pytest.raises(pisetup.SetupError, match="install-service"):
        pisetup.apply(root, pisetup.Options(force_config=True))
    with pytest.raises(pisetup.SetupError, match="UART"):
        pisetup.Options(pps_gpio=15).validate()
    assert pisetup.main(["apply", "--root", str(tmp_path / "nothing")]) == 2


def test_main_apply_and_old_boot_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path)
    # Before bookworm the boot partition was /boot.
    (root / "boot/firmware").rename(tmp_path / "fw")
    for name in ("config.txt", "cmdline.txt"):
        (tmp_path / "fw" / name).rename(root / "boot" / name)
    assert pisetup.main(["apply", "--root", str(root), "--force-config", "--no-pool"]) == 0
    assert "reboot" in capsys.readouterr().out
    assert "console=serial0" not in (root / "boot/cmdline.txt").read_text()
    assert pisetup.main(["apply", "--root", str(root), "--no-pool"]) == 0
    assert "nothing to change" in capsys.readouterr().out


NMEA = (b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
        b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n")


def test_check_reports_a_working_pi(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    pisetup.apply(root, pisetup.Options(force_config=True))
    (root / "dev").mkdir()
    (root / "dev/gps0").write_bytes(NMEA * 3)
    assert_file = root / "sys/class/pps/pps0/assert"
    assert_file.parent.mkdir(parents=True)
    assert_file.write_text("1763790000.000000123#41\n")

    def one_second_later(_: float) -> None:
        assert_file.write_text("1763790001.000000120#42\n")

    results = pisetup.check(root, seconds=1.0, sleep=one_second_later)
    assert all(c.ok for c in results), pisetup.format_checks(results)
    assert {c.name for c in results} >= {"UART free of a console", "GPS on /dev/gps0",
                                         "PPS on /dev/pps0", "systemd-timesyncd masked"}


def test_check_says_what_is_wrong(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "dev").mkdir()
    (root / "dev/gps0").write_bytes(b"\xff\x00garbage at the wrong baud\r\n")
    results = {c.name: c for c in pisetup.check(root, seconds=0.5, sleep=lambda _: None)}
    assert results["UART free of a console"].ok is False
    assert "console=serial0,115200" in results["UART free of a console"].detail
    assert results["systemd-timesyncd masked"].ok is False
    assert results["GPS on /dev/gps0"].ok is False
    assert "baud" in results["GPS on /dev/gps0"].detail
    # The original config.txt loads pps-gpio on GPIO4, but no /dev/pps0 appeared.
    assert results["PPS on /dev/pps0"].ok is False
    assert "GPIO4" in results["PPS on /dev/pps0"].detail
    assert pisetup.main(["check", "--root", str(root), "--seconds", "0.2", "--no-serial"]) == 1


def test_check_reads_a_pseudo_terminal(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        os.write(master, NMEA * 2)
        nbytes, rmc = pisetup.read_nmea(Path(os.ttyname(slave)), seconds=1.0)
    finally:
        os.close(master)
        os.close(slave)
    assert rmc == 2 and nbytes == len(NMEA) * 2


def shell_scripts() -> list[Path]:
    found = []
    for path in sorted(IMAGE.rglob("*")):
        if path.is_file() and (path.suffix == ".sh"
                               or path.read_bytes().startswith((b"#!/bin/bash", b"#!/usr/bin/env bash"))):
            found.append(path)
    return found


def test_shell_scripts_parse_and_stage_scripts_are_executable() -> None:
    scripts = shell_scripts()
    names = {p.name for p in scripts}
    assert {"build-image", "prerun.sh", "00-run.sh", "01-run-chroot.sh"} <= names
    for path in scripts:
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{path}: {result.stderr}"
        # pi-gen runs only executable scripts; a lost x bit silently skips the step.
        assert os.access(path, os.X_OK), f"{path} is not executable"
    packages = (IMAGE / "stage-stratum1/00-stratum1/00-packages").read_text().split()
    assert {"python3-venv", "pps-tools"} <= set(packages)


def test_build_image_prepares_a_pi_gen_checkout(tmp_path: Path) -> None:
    pigen = tmp_path / "pi-gen"
    (pigen / "stage2").mkdir(parents=True)
    (pigen / "build.sh").write_text("#!/bin/sh\nexit 1\n")
    (pigen / "build.sh").chmod(0o755)
    env = dict(os.environ, PYTHON=sys.executable, FIRST_USER_PASS="it's secret",
               PI_GEN_REPO="/nonexistent")  # a clone attempt would fail loudly
    result = subprocess.run(
        [str(IMAGE / "build-image"), "--pi-gen", str(pigen), "--prepare-only", "--",
         "--pps-gpio", "4"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    stage = pigen / "stage-stratum1"
    assert os.access(stage / "00-stratum1/01-run-chroot.sh", os.X_OK)
    snapshot = stage / "00-stratum1/files/stratum1-src.tar.gz"
    listing = subprocess.run(["tar", "tzf", str(snapshot)], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
    assert "scripts/install-service" in listing and "image/pisetup.py" in listing
    assert not any(name.startswith(".venv") for name in listing)
    assert (pigen / "stage2/SKIP_IMAGES").exists()
    # The config is a shell fragment pi-gen sources: check what it sets.
    shown = subprocess.run(
        ["bash", "-c", 'source "$1"; printf "%s|%s|%s|%s\\n" "$STAGE_LIST" "$FIRST_USER_PASS" '
         '"$STRATUM1_PI_SETUP_ARGS" "$RELEASE"', "sh", str(pigen / "config")],
        capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    assert shown == "stage0 stage1 stage2 stage-stratum1|it's secret|--pps-gpio 4|bookworm"


def test_build_image_refuses_bad_setup_options(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, PI_GEN_REPO="/nonexistent")
    for bad in (["--root", "/"], ["--pps", "kernel;reboot"], ["--pps-gpio", "99"], ["--bogus"]):
        result = subprocess.run(
            [str(IMAGE / "build-image"), "--pi-gen", str(tmp_path / "pg"), "--prepare-only", "--",
             *bad], capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode != 0
        assert "setup option" in result.stderr, result.stderr
        assert not (tmp_path / "pg").exists()
