"""Canonical form of a spec, comments kept: ruamel.yaml's round trip.

Canonical means: keys in the order the schema declares them (unknown keys after them, as
written), two-space indentation with list dashes indented under their key, no trailing spaces.
Values, quoting, flow/block style and comments are the author's and stay as they are.
"""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from mailwright.schema.annotations import item_of, model_of
from mailwright.schema.models import OrganizationSpec
from mailwright.schema.yamlsource import YamlSyntaxError


def _yaml() -> YAML:
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def format_spec(text: str) -> str:
    """`text` in canonical form; raises YamlSyntaxError when it is not YAML."""
    yaml = _yaml()
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlSyntaxError(f"YAML syntax: {exc.problem or exc}", line, column) from exc
    _reorder(data, OrganizationSpec)
    out = io.StringIO()
    yaml.dump(data, out)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


def _reorder(node: Any, annotation: Any) -> None:
    if isinstance(node, CommentedSeq):
        for child in node:
            _reorder(child, item_of(annotation))
        return
    model = model_of(annotation)
    if not isinstance(node, CommentedMap) or model is None:
        return
    known = [k for k in model.model_fields if k in node]
    for name in known + [k for k in list(node) if k not in model.model_fields]:
        node.move_to_end(name)
    for name in known:
        _reorder(node[name], model.model_fields[name].annotation)
