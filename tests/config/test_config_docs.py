"""docs/configuration.md names every directive and option the parser knows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stratum1.config import associations, directives
from stratum1.config.model import SYSTEM_FLAGS
from stratum1.config.parser import KNOWN_DIRECTIVES

DOC = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
FENCED = re.findall(r"```\n(.*?)```", DOC, flags=re.S)
INLINE = re.findall(r"`([^`\n]+)`", re.sub(r"```\n.*?```", "", DOC, flags=re.S))
CODE_WORDS = set(FENCED) | set(INLINE)
WORDS = {w for phrase in CODE_WORDS for w in re.split(r"[\s|\[\]\\]+", phrase) if w}

KEYWORDS = (set(KNOWN_DIRECTIVES) | set(associations.NETWORK_OPTIONS)
            | set(associations.REFCLOCK_OPTIONS) | set(associations.FUDGE_OPTIONS)
            | set(directives.RESTRICT_FLAGS) | set(directives.TOS) | set(directives.TINKER)
            | set(directives.DISCARD) | set(directives.MRU) | set(directives.RLIMIT)
            | set(SYSTEM_FLAGS) | set(directives.STATS) | set(directives.FILEGEN_TYPES))


@pytest.mark.parametrize("word", sorted(KEYWORDS))
def test_keyword_is_documented(word: str) -> None:
    assert word in WORDS, f"{word} is missing from docs/configuration.md"
