"""stratum1/config/parser.py: dispatch, includes, all-errors-at-once, load/reload/overrides."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from stratum1.config.diagnostics import ConfigError
from stratum1.config.model import Config
from stratum1.config.parser import (
    KNOWN_DIRECTIVES,
    MAX_INCLUDE_DEPTH,
    load,
    parse_file,
    parse_text,
    reload,
    with_overrides,
)


def messages(text: str, severity: str | None = None) -> list[str]:
    _, diags = parse_text(text, "t.conf")
    return [str(d) for d in diags if severity is None or d.severity == severity]


def test_empty_and_comment_only_text_gives_defaults() -> None:
    config, diags = parse_text("\n# nothing\n   \n\t# indented comment\n", "t.conf")
    assert diags == []
    assert config == Config(source_files=("t.conf",))


def test_comments_blanks_crlf_and_tabs_as_ntpd_takes_them() -> None:
    text = "server\tntp.example.org   iburst # trailing comment\r\n\r\n  driftfile /d#x\r\n"
    config, diags = parse_text(text, "t.conf")
    assert diags == []
    assert config.associations[0].host == "ntp.example.org"
    assert config.associations[0].iburst
    assert config.driftfile == "/d"


def test_quoted_strings_keep_blanks_and_hash() -> None:
    config, diags = parse_text('driftfile "/var/lib/my ntp/#drift"\n', "t.conf")
    assert diags == []
    assert config.driftfile == "/var/lib/my ntp/#drift"


def test_directive_keywords_are_case_insensitive() -> None:
    config, diags = parse_text("SERVER ntp.example.org IBURST\nDriftFile /x\n", "t.conf")
    assert diags == []
    assert config.associations[0].iburst and config.driftfile == "/x"


def test_unknown_directive_names_file_line_and_suggests() -> None:
    assert messages("\n\nsevrer a.example.org\n") == [
        "t.conf:3: sevrer: unknown directive (did you mean 'server'?)"]


def test_all_errors_of_a_file_are_reported_at_once() -> None:
    text = "bogus 1\nserver a.example.org minpoll 99\nrestrict default nothing\n" \
           "fudge 127.127.20.0 time1 0.1\ntos orphan x\n"
    msgs = messages(text, "error")
    assert [m.split(":")[1] for m in msgs] == ["1", "2", "3", "4", "5"]


def test_diagnostics_are_in_line_order_even_for_cross_line_checks() -> None:
    text = "fudge 127.127.22.0 flag3 1\nbogus\n"
    assert [m.split(":")[1] for m in messages(text)] == ["1", "2"]


def test_a_bad_line_does_not_lose_the_good_ones() -> None:
    config, diags = parse_text("server a.example.org\nserver 999.1.1.1\nserver b.example.org\n",
                               "t.conf")
    assert len(diags) == 1
    assert [a.host for a in config.associations] == ["a.example.org", "b.example.org"]


def test_retired_directive_crypto_is_an_error_naming_the_replacement() -> None:
    (msg,) = messages("crypto pw secret\n")
    assert msg.startswith("t.conf:1: crypto: ")
    assert "NTS" in msg and "symmetric keys" in msg


def test_retired_requestkey_is_a_warning_naming_ntpq() -> None:
    config, diags = parse_text("requestkey 15\n", "t.conf")
    (d,) = diags
    assert d.severity == "warning" and "ntpq" in d.message
    assert str(d).startswith("t.conf:1: warning: requestkey:")
    assert config.requestkey == 15


@pytest.mark.parametrize("name", ["trap", "phone", "revoke", "automax", "saveconfigdir"])
def test_other_retired_directives_warn(name: str) -> None:
    _, diags = parse_text(f"{name} x\n", "t.conf")
    assert [d.severity for d in diags] == ["warning"]


def test_known_directives_cover_the_issue_list() -> None:
    wanted = """server peer pool broadcast manycastclient refclock broadcastclient multicastclient
        manycastserver fudge restrict discard tos tinker ttl driftfile leapfile logfile
        logconfig pidfile statsdir keys keysdir includefile statistics filegen enable disable
        interface trustedkey requestkey controlkey setvar crypto""".split()
    assert set(wanted) <= KNOWN_DIRECTIVES


# --- includes ----------------------------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_includefile_is_relative_to_the_including_file(tmp_path: Path) -> None:
    top = write(tmp_path / "etc" / "ntp.conf", "includefile conf.d/servers.conf\ndriftfile /d\n")
    write(tmp_path / "etc" / "conf.d" / "servers.conf", "server a.example.org\n"
          "includefile more/keys.conf\n")
    write(tmp_path / "etc" / "conf.d" / "more" / "keys.conf", "keys /etc/ntp.keys\n")
    config, diags = parse_file(top)
    assert diags == []
    assert config.associations[0].host == "a.example.org"
    assert config.keys == "/etc/ntp.keys"
    assert len(config.source_files) == 3 and config.source_files[0] == str(top)


def test_errors_in_included_files_name_that_file(tmp_path: Path) -> None:
    top = write(tmp_path / "ntp.conf", "includefile inc.conf\n")
    inc = write(tmp_path / "inc.conf", "\nserver\n")
    _, diags = parse_file(top)
    assert [str(d) for d in diags] == [f"{inc}:2: server: needs an address or host name"]


def test_include_loop_is_detected(tmp_path: Path) -> None:
    a = write(tmp_path / "a.conf", "server a.example.org\nincludefile b.conf\n")
    write(tmp_path / "b.conf", "includefile a.conf\n")
    config, diags = parse_file(a)
    (d,) = diags
    assert "include loop" in d.message and d.location.line == 1
    assert d.location.file.endswith("b.conf")
    assert len(config.associations) == 1  # a.conf was read once, not forever


def test_self_include_is_a_loop(tmp_path: Path) -> None:
    a = write(tmp_path / "a.conf", "includefile a.conf\n")
    _, diags = parse_file(a)
    assert len(diags) == 1 and "include loop" in diags[0].message


def test_the_same_file_may_be_included_twice_without_a_loop(tmp_path: Path) -> None:
    top = write(tmp_path / "a.conf", "includefile k.conf\nincludefile k.conf\n")
    write(tmp_path / "k.conf", "trustedkey 1\n")
    _, diags = parse_file(top)
    assert diags == []


def test_include_depth_limit(tmp_path: Path) -> None:
    n = MAX_INCLUDE_DEPTH + 2
    for i in range(n):
        write(tmp_path / f"d{i}.conf", f"server s{i}.example.org\nincludefile d{i + 1}.conf\n")
    config, diags = parse_file(tmp_path / "d0.conf")
    (d,) = diags
    assert "nested deeper" in d.message
    assert d.location.file.endswith(f"d{MAX_INCLUDE_DEPTH - 1}.conf")
    assert len(config.associations) == MAX_INCLUDE_DEPTH


def test_missing_include_is_an_error_at_the_includefile_line(tmp_path: Path) -> None:
    top = write(tmp_path / "a.conf", "\nincludefile nope.conf\n")
    (d,) = parse_file(top)[1]
    assert d.location.line == 2 and "cannot read" in d.message


def test_include_of_a_directory_or_device_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    top = write(tmp_path / "a.conf", "includefile dir\nincludefile /dev/zero\n")
    msgs = [d.message for d in parse_file(top)[1]]
    assert "is a directory" in msgs[0] and "not a regular file" in msgs[1]


def test_include_glob_reads_matches_in_order(tmp_path: Path) -> None:
    top = write(tmp_path / "a.conf", "includefile conf.d/*.conf\nincludefile none/*.conf\n")
    write(tmp_path / "conf.d" / "20-b.conf", "server b.example.org\n")
    write(tmp_path / "conf.d" / "10-a.conf", "server a.example.org\n")
    config, diags = parse_file(top)
    assert [a.host for a in config.associations] == ["a.example.org", "b.example.org"]
    assert [d.severity for d in diags] == ["warning"]


def test_missing_top_file_is_an_error_not_an_exception(tmp_path: Path) -> None:
    config, diags = parse_file(tmp_path / "missing.conf")
    assert len(diags) == 1 and diags[0].is_error
    assert str(diags[0]).startswith(f"{tmp_path / 'missing.conf'}: ")


def test_latin1_comments_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "a.conf"
    path.write_bytes("# Zeitserver f\u00fcr das B\u00fcro\nserver a.example.org\n".encode("latin-1"))
    config, diags = parse_file(path)
    assert diags == [] and len(config.associations) == 1


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.conf"
    path.write_text("#" * (2 << 20))
    (d,) = parse_file(path)[1]
    assert "larger than" in d.message


# --- load / reload / overrides ------------------------------------------------------------------

def test_load_raises_config_error_listing_every_error(tmp_path: Path) -> None:
    path = write(tmp_path / "a.conf", "bogus\nserver\nrequestkey 1\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    err = info.value
    assert len(err.errors) == 2 and len(err.diagnostics) == 3
    text = str(err)
    assert text.splitlines()[0] == "2 errors in configuration"
    assert f"{path}:1: bogus: unknown directive" in text
    assert f"{path}:2: server: needs an address or host name" in text


def test_load_logs_warnings_and_returns_config(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "a.conf", "server a.example.org\nrequestkey 1\n")
    with caplog.at_level(logging.WARNING, logger="stratum1.config.parser"):
        config = load(path)
    assert config.associations[0].host == "a.example.org"
    assert any("requestkey" in r.getMessage() for r in caplog.records)


def test_reload_keeps_running_config_on_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "a.conf", "server a.example.org\n")
    running = load(path)
    path.write_text("server b.example.org\nbogus\n")
    config, diags = reload(path, running)
    assert config is running and any(d.is_error for d in diags)
    path.write_text("server b.example.org\n")
    config, diags = reload(path, running)
    assert config.associations[0].host == "b.example.org" and diags == []


def test_with_overrides_replaces_file_values_and_skips_none() -> None:
    config, _ = parse_text("driftfile /file/drift\nstatsdir /file/stats\n", "t.conf")
    new = with_overrides(config, driftfile="/cli/drift", statsdir=None, keys="/cli/keys",
                         logfile="/cli/log", pidfile="/cli/pid")
    assert (new.driftfile, new.statsdir, new.keys, new.logfile, new.pidfile) == (
        "/cli/drift", "/file/stats", "/cli/keys", "/cli/log", "/cli/pid")
    assert config.driftfile == "/file/drift"
    with pytest.raises(TypeError):
        with_overrides(config, driftfiel="/x")


def test_parse_text_relative_include_uses_base_dir(tmp_path: Path) -> None:
    write(tmp_path / "inc.conf", "server a.example.org\n")
    config, diags = parse_text("includefile inc.conf\n", "<cli>", base_dir=str(tmp_path))
    assert diags == [] and config.associations[0].host == "a.example.org"


def test_config_is_immutable_and_hashable_collections() -> None:
    config, _ = parse_text("server a.example.org\nrestrict default kod\n", "t.conf")
    with pytest.raises(AttributeError):
        config.driftfile = "/x"  # type: ignore[misc]
    assert isinstance(config.associations, tuple) and isinstance(config.restrict, tuple)
    assert isinstance(config.restrict[0].flags, frozenset)
    hash(config.associations)


def test_no_file_is_left_open(tmp_path: Path) -> None:
    path = write(tmp_path / "a.conf", "server a.example.org\n")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        parse_file(path)
    assert len(os.listdir("/proc/self/fd")) <= before + 1
