"""Config diagnostics: one message per problem, naming file:line and the directive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .model import Location

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """A problem found in a config file. ``str()`` is ``file:line: directive: message``
    (``file:line: warning: directive: message`` for warnings)."""

    location: Location
    directive: str
    message: str
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        if self.directive:
            return f"{self.location}: {prefix}{self.directive}: {self.message}"
        return f"{self.location}: {prefix}{self.message}"


class ConfigError(Exception):
    """The configuration has errors; ``diagnostics`` holds every one of them (and warnings)."""

    def __init__(self, diagnostics: tuple[Diagnostic, ...] | list[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__(str(self))

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.is_error)

    def __str__(self) -> str:
        n = len(self.errors)
        head = f"{n} error{'s' if n != 1 else ''} in configuration"
        return "\n".join([head, *(str(d) for d in self.diagnostics)])


def has_errors(diagnostics: list[Diagnostic] | tuple[Diagnostic, ...]) -> bool:
    return any(d.is_error for d in diagnostics)
