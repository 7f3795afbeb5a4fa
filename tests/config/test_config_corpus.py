"""The corpus: real-world configs must parse without errors; broken ones must fail with exactly
the messages in their ``.expected`` golden file (regenerate with STRATUM1_REGEN_GOLDEN=1 and
review the diff)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stratum1.config.diagnostics import has_errors
from stratum1.config.parser import parse_file

CORPUS = Path(__file__).parent / "corpus"
GOOD = sorted((CORPUS / "good").glob("*.conf"))
BAD = sorted((CORPUS / "bad").glob("*.conf"))


def test_corpus_is_not_empty() -> None:
    assert len(GOOD) >= 10 and len(BAD) >= 8


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_good_config_parses_without_errors(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(path.parent)
    config, diags = parse_file(path.name)
    assert not has_errors(diags), "\n".join(map(str, diags))
    assert config.associations or config.refclocks
    assert config.source_files[0] == path.name


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_config_fails_with_expected_messages(path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(path.parent)
    _, diags = parse_file(path.name)
    assert has_errors(diags)
    got = "".join(f"{d}\n" for d in diags)
    expected_path = path.with_suffix(".expected")
    if os.environ.get("STRATUM1_REGEN_GOLDEN"):
        expected_path.write_text(got)
    assert got == expected_path.read_text()
