"""Splits ntp.conf text into statements: one per line, ``#`` comments, double-quoted strings.

As in ntpd, a statement is a single line; words are separated by blanks; ``#`` outside quotes
starts a comment that runs to the end of the line.
"""

from __future__ import annotations

from dataclasses import dataclass

from .diagnostics import Diagnostic
from .model import Location


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    quoted: bool = False

    @property
    def keyword(self) -> str:
        """The text as a keyword (keywords match case-insensitively; quoted text never does)."""
        return "" if self.quoted else self.text.lower()


@dataclass(frozen=True, slots=True)
class Statement:
    directive: str  # lower case
    args: tuple[Token, ...]
    location: Location
    raw_directive: str = ""


_BLANKS = " \t\f\v\r"


def _bad_char(ch: str) -> bool:
    return (ord(ch) < 0x20 and ch not in _BLANKS) or ord(ch) == 0x7F


def tokenize_line(line: str) -> tuple[list[Token], str | None]:
    """The tokens of one line, and an error message (None when the line is well formed)."""
    tokens: list[Token] = []
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if ch in _BLANKS:
            i += 1
        elif ch == "#":
            break
        elif ch == '"':
            end = line.find('"', i + 1)
            if end < 0:
                return tokens, "unterminated quoted string"
            text = line[i + 1 : end]
            if any(_bad_char(c) for c in text):
                return tokens, "control character in quoted string"
            tokens.append(Token(text, quoted=True))
            i = end + 1
        else:
            j = i
            while j < n and line[j] not in _BLANKS and line[j] not in '#"':
                if _bad_char(line[j]):
                    return tokens, f"control character 0x{ord(line[j]):02x} in line"
                j += 1
            tokens.append(Token(line[i:j]))
            i = j
    return tokens, None


def tokenize(text: str, filename: str) -> tuple[list[Statement], list[Diagnostic]]:
    """Statements of a whole file, and diagnostics for lines that cannot be tokenized."""
    statements: list[Statement] = []
    diags: list[Diagnostic] = []
    # Only "\n" ends a line (as in ntpd), so line numbers match what an editor shows.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.startswith("\ufeff") and lineno == 1:
            line = line[1:]
        tokens, error = tokenize_line(line)
        loc = Location(filename, lineno)
        if error is not None:
            directive = tokens[0].text.lower() if tokens else ""
            diags.append(Diagnostic(loc, directive, error))
            continue
        if not tokens:
            continue
        first = tokens[0]
        statements.append(Statement(first.text.lower(), tuple(tokens[1:]), loc, first.text))
    return statements, diags
