"""Property tests: the parser never raises on arbitrary input; it only returns diagnostics,
and every diagnostic names a file:line that exists."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stratum1.config.lexer import tokenize
from stratum1.config.parser import KNOWN_DIRECTIVES, parse_text

WORDS = sorted(KNOWN_DIRECTIVES) + [
    "127.127.20.0", "127.127.22.1", "127.127.28.0", "127.127.1.0", "127.127.300.0", "-4", "-6",
    "default", "source", "mask", "255.255.255.0", "192.0.2.1", "::1", "ntp.example.org",
    "iburst", "prefer", "minpoll", "maxpoll", "key", "mode", "time1", "time2", "flag1", "flag3",
    "refid", "stratum", "unit", "nmea", "pps", "shm", "local", "gpsd", "0", "1", "17", "-1",
    "0.5", "1e9", "nan", "(", ")", "...", "=", '"', "#", "kod", "orphan", "all", "listen",
    "65536", "0x10", "/dev/pps0", "",
]

lines = st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join)
configs = st.lists(lines, max_size=25).map("\n".join)
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def check(text: str) -> None:
    config, diags = parse_text(text, "f.conf")
    n_lines = text.count("\n") + 1
    for d in diags:
        assert d.location.file == "f.conf"
        assert 1 <= d.location.line <= n_lines, d
        assert "internal error" not in d.message, d
        str(d)
    assert config.source_files == ("f.conf",)


@SETTINGS
@given(configs)
def test_parser_never_raises_on_directive_soup(text: str) -> None:
    check(text)


@SETTINGS
@given(st.text(max_size=400))
def test_parser_never_raises_on_arbitrary_text(text: str) -> None:
    check(text.replace("includefile", "x"))  # no reads of random paths from random text


@SETTINGS
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_tokenize_line_count_is_newlines(text: str) -> None:
    statements, diags = tokenize(text, "f")
    n = text.count("\n") + 1
    assert all(1 <= s.location.line <= n for s in statements)
    assert len({s.location.line for s in statements}) == len(statements)
    assert all(1 <= d.location.line <= n for d in diags)
