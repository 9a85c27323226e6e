"""Diagnostics: every problem in a spec, located at `file:line:column`."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

# A path into a loaded document: mapping keys and sequence indexes, as pydantic reports `loc`.
SpecPath = tuple[str | int, ...]


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True)
class Position:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """A problem found before it is located: where it is, as a path into one source."""

    path: SpecPath
    code: str
    message: str
    severity: Severity = Severity.ERROR
    # Point at the key of the last path element rather than its value (unknown keys).
    at_key: bool = False


@dataclass(frozen=True)
class Diagnostic:
    position: Position
    severity: Severity
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.position}: {self.severity}: {self.message}"

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.position.file, self.position.line, self.position.column, self.message)

    def as_dict(self) -> dict[str, str | int]:
        return {
            "severity": str(self.severity),
            "file": self.position.file,
            "line": self.position.line,
            "column": self.position.column,
            "message": self.message,
            "code": self.code,
        }


def sorted_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    return sorted(set(diagnostics), key=Diagnostic.sort_key)


class SpecError(Exception):
    """Raised when specs hold errors; carries every diagnostic, sorted by position."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = sorted_diagnostics(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.ERROR]
