"""The installed command line as a user meets it: `config check`, refusing a broken config,
`version`, all through `python -m stratum1` in a fresh process."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest
from interop_support import LOCAL_CONF, REPO_DIR, loopback_host, ntp_query

# Two independent mistakes: every error of a file is reported at once, each as file:line.
BROKEN_CONF = """\
# broken on purpose
server 127.127.1.0
fudge 127.127.1.0 stratum banana
frobnicate yes
"""


def stratum1(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stratum1", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_version_matches_installed_distribution():
    result = stratum1("version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["stratum1", version("stratum1")]


def test_config_check_accepts_good_file(tmp_path):
    conf = tmp_path / "ntp.conf"
    conf.write_text(LOCAL_CONF)
    result = stratum1("config", "check", str(conf))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "config check printed no summary"


def test_config_check_reports_every_error_as_file_line(tmp_path):
    conf = tmp_path / "ntp.conf"
    conf.write_text(BROKEN_CONF)
    result = stratum1("config", "check", str(conf))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{conf}:3" in result.stderr, result.stderr
    assert f"{conf}:4" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_config_check_missing_file_is_an_error(tmp_path):
    result = stratum1("config", "check", str(tmp_path / "absent.conf"))
    assert result.returncode == 1
    assert "absent.conf" in result.stderr
    assert "Traceback" not in result.stderr


def test_daemon_refuses_broken_config(start_daemon, tmp_path):
    host = loopback_host()
    conf = tmp_path / "broken.conf"
    conf.write_text(BROKEN_CONF)
    daemon = start_daemon(conf, listen=f"{host}:123")
    rc = daemon.wait_exit(timeout=20)
    if rc is None:
        pytest.fail(f"daemon still running on a broken config\n{daemon.describe()}")
    output = daemon.output()
    assert rc != 0, output
    assert f"{conf}:3" in output and f"{conf}:4" in output, output
    assert "Traceback" not in output, output
    with pytest.raises(TimeoutError):
        ntp_query(host, 123, timeout=0.5)


def test_shipped_example_config_passes_check():
    # scripts/install-service installs it as /etc/stratum1/ntp.conf; the unit checks it first.
    example = REPO_DIR / "systemd" / "ntp.conf.example"
    result = stratum1("config", "check", str(example))
    assert result.returncode == 0, result.stderr
