"""Reading a spec's YAML: fast to load, precise to blame.

Loading uses libyaml through PyYAML's C loader with the YAML 1.2 core schema (so `no` stays the
string "no", as in ruamel.yaml and yaml-language-server), which reads a 10,000-mailbox spec in
well under a second where a pure-Python round-trip loader needs several. Positions are needed only
when there is something to report: `YamlSource.locate` then composes the node tree once (libyaml
again, no Python objects built) and walks it by the problem's path. ruamel.yaml stays the
round-trip engine of `fmt`, where comments must survive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from mailwright.schema.diagnostics import Position, SpecPath

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Yaml12Loader(_Loader):  # type: ignore[valid-type,misc]
    """YAML 1.2 core schema: no yes/no/on/off booleans, no sexagesimals, no implicit dates."""

    yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, re.Pattern[str]]]]] = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Fast path: distinct plain-string keys cannot be duplicates. Other keys (`1` and `0x1`,
        # `true` and `1`) can be equal once constructed, so they are constructed and compared.
        keys = {k.value for k, _ in node.value if k.tag == "tag:yaml.org,2002:str"}
        if len(keys) == len(node.value):
            fast: dict[Any, Any] = super().construct_mapping(node, deep=deep)
            return fast
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        base = {"0o": 8, "0x": 16}.get(digits[:2], 10)
        return sign * int(digits[2:] if base != 10 else digits, base)


_CORE_RESOLVERS: list[tuple[str, str, str]] = [
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("null", r"^(?:~|null|Null|NULL)$", "~nN"),
    ("merge", r"^<<$", "<"),
]
for _name, _pattern, _first in _CORE_RESOLVERS:
    _Yaml12Loader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_name}", re.compile(_pattern), list(_first)
    )
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^$"), [""])
_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _Yaml12Loader.construct_yaml_int)


class YamlSyntaxError(Exception):
    """The text is not well-formed YAML; `position` says where libyaml gave up."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Yaml12Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        lines = text.splitlines()
        if line <= len(lines) and lines[line - 1][column - 1 : column] == "\t":
            # libyaml does not name the character; a tab is the usual one (YAML 1.2 §6.1).
            problem, context = "a tab character: YAML indents with spaces only", ""
        elif exc.context and problem.startswith("but found"):
            # libyaml splits "expected X, but found Y" into context and problem.
            problem, context = f"{exc.context}, {problem}", ""
        raise YamlSyntaxError(f"YAML syntax: {problem}{context}", line, column) from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"YAML syntax: {exc}", 1, 1) from exc


@dataclass
class YamlSource:
    """One YAML file's text, with lazy positions for paths into it."""

    name: str
    text: str
    _root: yaml.Node | None = field(default=None, repr=False)

    def load(self) -> Any:
        return parse_yaml(self.text)

    def locate(self, path: SpecPath, at_key: bool = False) -> Position:
        node = self._composed()
        for depth, step in enumerate(path):
            child = _child(node, step, want_key=at_key and depth == len(path) - 1)
            if child is None:
                break
            node = child
        if node is None:
            return Position(self.name, 1, 1)
        return Position(self.name, node.start_mark.line + 1, node.start_mark.column + 1)

    def _composed(self) -> yaml.Node | None:
        if self._root is None:
            self._root = yaml.compose(self.text, Loader=_Yaml12Loader)
        return self._root


def _child(node: yaml.Node | None, step: str | int, want_key: bool) -> yaml.Node | None:
    if isinstance(node, yaml.SequenceNode) and isinstance(step, int):
        return node.value[step] if 0 <= step < len(node.value) else None
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(step):
                return key_node if want_key else value_node
    return None
