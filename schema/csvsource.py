"""Directory import: mailboxes bulk-loaded from CSV, one a row, located like YAML.

The header row names Mailbox attributes; nested ones are dotted (`protocols.pop3.enabled`).
Multi-valued cells (`proxy_addresses`, `previous_aliases`) separate values with `%`, as
Exchange 5.5's directory import did. An empty cell leaves the attribute unset.
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
from dataclasses import dataclass, field
from typing import Any

from mailwright.schema.diagnostics import Position, Problem, SpecPath

MULTI_VALUE_SEPARATOR = "%"
MULTI_VALUED = frozenset({"proxy_addresses", "previous_aliases"})


def did_you_mean(word: str, choices: list[str]) -> str:
    """pypa/build's habit: an unknown name gets the closest known one."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass
class CsvSource:
    name: str
    text: str
    columns: list[str] = field(default_factory=list)
    row_lines: list[int] = field(default_factory=list)

    def read(
        self, known: list[str], defaults: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], list[Problem]]:
        """The rows as nested mappings for pydantic, and the problems of the file's shape."""
        reader = csv.reader(io.StringIO(self.text, newline=""))
        self.columns = next(reader, [])
        problems = [
            Problem(
                ("header", c),
                "unknown-column",
                f"unknown column '{name}'{did_you_mean(name, known)}",
            )
            for c, name in enumerate(self.columns)
            if name not in known
        ]
        # Unknown columns are reported once, in the header, not again in every row.
        unknown = {name for name in self.columns if name not in known}
        rows: list[dict[str, Any]] = []
        plan = _column_plan(self.columns, unknown)
        line = reader.line_num
        for cells in reader:
            if cells:
                if len(cells) > len(self.columns):
                    problems.append(
                        Problem(
                            ("rows", len(rows)),
                            "extra-cells",
                            f"row has {len(cells)} cells but the header names "
                            f"{len(self.columns)} columns",
                        )
                    )
                self.row_lines.append(line + 1)
                rows.append(_nest(plan, cells, defaults))
            line = reader.line_num
        return rows, problems

    def locate(self, path: SpecPath, at_key: bool = False) -> Position:
        if path[:1] == ("header",):
            return Position(self.name, 1, _field_columns(self._line(1))[int(path[1])])
        line = self.row_lines[int(path[1])]
        names = [str(p) for p in path[2:] if isinstance(p, str)]
        column = ".".join(names[:3]) if names[:1] == ["protocols"] else ".".join(names[:1])
        starts = _field_columns(self._line(line))
        index = self.columns.index(column) if column in self.columns else 0
        return Position(self.name, line, starts[index] if index < len(starts) else 1)

    def _line(self, number: int) -> str:
        return self._lines[number - 1] if number <= len(self._lines) else ""

    @functools.cached_property
    def _lines(self) -> list[str]:
        return self.text.splitlines()


# Where each column's cell goes in a row: (cell index, parent keys, key, multi-valued).
ColumnPlan = list[tuple[int, tuple[str, ...], str, bool]]


def _column_plan(columns: list[str], skip: set[str]) -> ColumnPlan:
    """Worked out once a file: `protocols.pop3.enabled` nests as protocols -> pop3 -> enabled."""
    plan = []
    for i, name in enumerate(columns):
        if name not in skip:
            *parents, leaf = name.split(".")
            plan.append((i, tuple(parents), leaf, name in MULTI_VALUED))
    return plan


def _nest(plan: ColumnPlan, cells: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = dict(defaults)
    for i, parents, leaf, multi in plan:
        if i >= len(cells) or not (cell := cells[i]):
            continue
        target = row
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = cell.split(MULTI_VALUE_SEPARATOR) if multi else cell
    return row


def _field_columns(line: str) -> list[int]:
    """1-based columns where each field of a CSV line starts."""
    starts, quoted = [1], False
    for i, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            starts.append(i + 2)
    return starts
