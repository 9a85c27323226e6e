"""Canonical form of a spec, comments kept: ruamel.yaml's round trip.

Canonical means: keys in the order the schema declares them (unknown keys after them, as
written), two-space indentation with list dashes indented under their key, no trailing spaces.
Values, quoting, flow/block style and comments are the author's and stay as they are.
"""

from __future__ import annotations

import io
import itertools
from collections import Counter
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, MarkedYAMLError
from ruamel.yaml.tokens import CommentToken

from mailwright.schema.annotations import item_of, model_of
from mailwright.schema.models import OrganizationSpec
from mailwright.schema.yamlsource import YamlSyntaxError, parse_yaml


def _yaml() -> YAML:
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def format_spec(text: str) -> str:
    """`text` in canonical form; raises YamlSyntaxError when it is not YAML (or, rarely, when
    the canonical form cannot be written without changing the data)."""
    yaml = _yaml()
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlSyntaxError(f"YAML syntax: {exc.problem or exc}", line, column) from exc
    if not isinstance(data, CommentedMap):
        # Empty, only comments, a list or a scalar: no spec to put in order (validate says why),
        # and dumping it would turn comments into "null".
        return text
    _reorder(data, OrganizationSpec)
    out = io.StringIO()
    yaml.dump(data, out)
    # Only YAML's own white space: a plain scalar may end in a no-break space.
    formatted = "\n".join(line.rstrip(" \t") for line in out.getvalue().splitlines()) + "\n"
    # ruamel.yaml's round trip has rare emitter bugs (an end-of-line comment on a key, then a
    # `- {}` item, glues the next item's keys onto one line): never hand back changed data.
    meaning = parse_yaml(text)
    try:
        kept = parse_yaml(formatted) == meaning
    except YamlSyntaxError:
        kept = False
    if not kept:
        raise YamlSyntaxError(
            "cannot put this file in canonical form without changing its data; it is left as it is",
            1,
            1,
        )
    # ruamel.yaml also drops a comment line that follows a flow mapping in a block sequence.
    lost = _comment_lines(text) - _comment_lines(formatted)
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() in lost:
            raise YamlSyntaxError(
                "cannot put this file in canonical form without losing this comment; "
                "move it, or format the file by hand",
                number,
                len(line) - len(line.lstrip()) + 1,
            )
    return formatted


def _comment_lines(text: str) -> Counter[str]:
    return Counter(line.strip() for line in text.splitlines() if line.lstrip().startswith("#"))


def _reorder(node: Any, annotation: Any, parent: Any = None) -> None:
    """Put `node` (the value of `parent`, a mapping key or sequence index) in schema order."""
    if isinstance(node, CommentedSeq):
        for index, child in enumerate(node):
            _reorder(child, item_of(annotation), (node, index))
        return
    model = model_of(annotation)
    if not isinstance(node, CommentedMap) or model is None:
        return
    known = [k for k in model.model_fields if k in node]
    for name in known:
        _reorder(node[name], model.model_fields[name].annotation, (node, name))
    before = list(node)
    order = known + [k for k in before if k not in model.model_fields]
    if order == before:
        return
    # ruamel keeps the lines (blank or comment) below a key's line with that key; they lead into
    # the key that followed it, and those below the last key close the mapping.
    below = {key: _take_lines_below(node, key) for key in before}
    leading = {after: below[key] for key, after in itertools.pairwise(before)}
    for name in order:
        node.move_to_end(name)
    # Comments ruamel already keeps above a key (after flow values) go above the mapping when
    # that key comes first: ruamel would print them between a sequence's dash and the key.
    first = node.ca.items.get(order[0])
    if first and first[1]:
        _add_lines_above(node, parent, "".join(_indented(token) for token in first[1]))
        first[1] = None
    _add_lines_above(node, parent, leading.get(order[0], ""))
    for previous, key in itertools.pairwise(order):
        _add_lines_below(node, previous, leading.get(key, ""))
    _add_lines_below(node, order[-1], below[before[-1]])


def _comment_slot(container: Any, key: Any) -> tuple[Any, Any, int]:
    """Where ruamel keeps the comment after `container[key]`: in its last block entry, if any."""
    value = container[key]
    if isinstance(value, CommentedMap | CommentedSeq) and value and not value.fa.flow_style():
        return _comment_slot(
            value, list(value)[-1] if isinstance(value, CommentedMap) else len(value) - 1
        )
    return container, key, 0 if isinstance(container, CommentedSeq) else 2


def _take_lines_below(node: CommentedMap, key: Any) -> str:
    container, key, index = _comment_slot(node, key)
    slots = container.ca.items.get(key)
    token = slots[index] if slots else None
    if token is None:
        return ""
    head, newline, below = token.value.partition("\n")
    if below:
        if head:
            token.value = head + newline
        else:
            slots[index] = None
    return str(below)


def _indented(token: CommentToken) -> str:
    return " " * token.column + token.value if token.value.startswith("#") else str(token.value)


def _add_lines_above(node: CommentedMap, parent: Any, lines: str) -> None:
    """Lines above a mapping's first key. Under a key, ruamel prints them from the parent's
    comments (after the key's own end-of-line comment); elsewhere from the mapping's."""
    if not lines:
        return
    token = CommentToken(lines, CommentMark(0), None)
    if parent is not None and isinstance(parent[0], CommentedMap):
        slots = parent[0].ca.items.setdefault(parent[1], [None, None, None, None])
        if slots[2] is not None:
            slots[2].value = slots[2].value.rstrip("\n") + "\n" + lines
        else:
            slots[3] = [*(slots[3] or []), token]
        return
    if parent is not None:
        # A sequence item: above its dash.
        slots = parent[0].ca.items.setdefault(parent[1], [None, None, None, None])
        slots[1] = [*(slots[1] or []), token]
        return
    if node.ca.comment is None:
        node.ca.comment = [None, []]
    if node.ca.comment[1] is None:
        node.ca.comment[1] = []
    node.ca.comment[1].append(token)


def _add_lines_below(node: CommentedMap, key: Any, lines: str) -> None:
    if not lines:
        return
    container, key, index = _comment_slot(node, key)
    slots = container.ca.items.setdefault(key, [None, None, None, None])
    if slots[index] is None:
        slots[index] = CommentToken("\n" + lines, CommentMark(0), None)
    else:
        slots[index].value = slots[index].value.rstrip("\n") + "\n" + lines
