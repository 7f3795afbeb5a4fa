"""The mutable state a parse accumulates, statement by statement, before it is frozen into a
Config; and the option reader every directive handler shares."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .diagnostics import Diagnostic, Severity
from .lexer import Statement, Token
from .model import AssociationConfig, InterfaceRule, Location, RestrictEntry, SetVar
from .values import BadValue


@dataclass
class RefclockDecl:
    """A ``server 127.127.t.u`` / ``refclock NAME`` line, or a ``fudge`` line (``is_fudge``)."""

    type: int
    unit: int
    fields: dict[str, Any]
    location: Location
    directive: str
    is_fudge: bool = False


@dataclass
class Builder:
    """Everything read so far. Handlers append to it and report through error()/warning()."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    associations: list[AssociationConfig] = field(default_factory=list)
    refclocks: list[RefclockDecl] = field(default_factory=list)
    restrict: list[RestrictEntry] = field(default_factory=list)
    interfaces: list[InterfaceRule] = field(default_factory=list)
    setvars: list[SetVar] = field(default_factory=list)
    # Dataclass sections (tos, tinker, discard, mru, rlimit, nts): field -> value overrides.
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Plain Config fields set by simple directives (driftfile, keys, ...).
    scalars: dict[str, Any] = field(default_factory=dict)
    # Where each scalar was last set, for "set twice" warnings.
    scalar_locations: dict[str, Location] = field(default_factory=dict)
    enable_changes: list[tuple[str, bool]] = field(default_factory=list)
    statistics: set[str] = field(default_factory=set)
    filegens: dict[str, dict[str, Any]] = field(default_factory=dict)
    trustedkeys: set[int] = field(default_factory=set)
    logconfig: list[str] = field(default_factory=list)
    ttl: list[int] = field(default_factory=list)
    multicastclient: list[str] = field(default_factory=list)
    manycastserver: list[str] = field(default_factory=list)
    source_files: list[str] = field(default_factory=list)

    def report(self, stmt: Statement | Location, message: str, severity: Severity = "error",
               directive: str | None = None) -> None:
        if isinstance(stmt, Statement):
            loc, name = stmt.location, stmt.directive
        else:
            loc, name = stmt, ""
        self.diagnostics.append(Diagnostic(loc, directive if directive is not None else name,
                                           message, severity))

    def error(self, stmt: Statement | Location, message: str, directive: str | None = None) -> None:
        self.report(stmt, message, "error", directive)

    def warning(self, stmt: Statement | Location, message: str,
                directive: str | None = None) -> None:
        self.report(stmt, message, "warning", directive)

    def section(self, name: str) -> dict[str, Any]:
        return self.sections.setdefault(name, {})


def suggest(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` when ``word`` is close to one of ``choices``."""
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: An option value converter: word -> value, raising BadValue.
Converter = Callable[[str], Any]


@dataclass(frozen=True)
class Opt:
    """How one option keyword is read: a bare flag (``convert`` None) or keyword + value.

    ``optional_value``: the value may be left out (ntpsec ``flag1`` alone means ``flag1 1``).
    ``severity``/``message``: the option is recognised but not carried; report and skip it.
    """

    convert: Converter | None = None
    optional_value: Converter | None = None
    severity: Severity | None = None
    message: str = ""
    takes_value: bool = False


def _looks_like_value(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or text[0] in "+-." or "/" in text)


def read_options(b: Builder, stmt: Statement, tokens: Sequence[Token],
                 spec: dict[str, Opt], what: str = "option") -> dict[str, Any]:
    """Read ``keyword [value]`` options; report every bad one and keep going."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        key = tok.keyword
        i += 1
        opt = spec.get(key)
        if opt is None:
            b.error(stmt, f"unknown {what} {tok.text!r}{suggest(key, sorted(spec))}")
            # Skip the unknown option's value too, so one typo gives one message.
            while i < len(tokens) and tokens[i].keyword not in spec and _looks_like_value(
                    tokens[i].text):
                i += 1
            continue
        if opt.severity is not None:
            if opt.takes_value and i < len(tokens):
                i += 1
            b.report(stmt, f"{key}: {opt.message}", opt.severity)
            continue
        if opt.optional_value is not None:
            if i < len(tokens) and tokens[i].keyword not in spec:
                try:
                    out[key] = opt.optional_value(tokens[i].text)
                except BadValue as exc:
                    b.error(stmt, f"{key}: {exc}")
                i += 1
            else:
                out[key] = True
            continue
        if opt.convert is None:
            out[key] = True
            continue
        if i >= len(tokens):
            b.error(stmt, f"{key} needs a value")
            break
        try:
            out[key] = opt.convert(tokens[i].text)
        except BadValue as exc:
            b.error(stmt, f"{key}: {exc}")
        i += 1
    return out
