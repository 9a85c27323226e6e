"""Renderers for a plan: one per output format (text, json, markdown, summary)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson

from mailwright.compiler.plan import SYMBOLS, Action, Plan, ResourceChange

PLAN_FORMAT_VERSION = "1.0"
STYLE = {Action.CREATE: "green", Action.UPDATE: "yellow", Action.DELETE: "red"}


def _value(value: Any) -> str:
    """An attribute's value as the text plan shows it: a string in quotes as it is (a masked
    secret too), anything else as JSON. The common types first: two million of these make the
    first plan of a large organization."""
    kind = type(value)
    if kind is str or isinstance(value, str):
        return f'"{value}"'
    if kind is int:
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    return json.dumps(value, ensure_ascii=False)


def _change_text(change: ResourceChange, move: tuple[int, int] | None = None) -> str:
    """A change's lines, joined by newlines: its address, then what changes (`move`: the
    messages and bytes a home server change moves)."""
    action, resource = change.action, change.resource
    head = f"  {SYMBOLS[action]} {resource.address}{_note(change)}"
    if action is Action.CREATE:
        # listed() rather than changed(): no (name, None, value) triples for most of the
        # two million lines of a first plan.
        return head + "".join(
            [f"\n      {name}: {_value(value)}" for name, value in resource.listed()]
        )
    if action is Action.UPDATE:
        return head + "".join(
            [
                f"\n      {name}: {_value(before)} → {_value(after)}"
                + (
                    f" (move {move[0]} messages, {move[1]} bytes)"
                    if name == "home_server" and move
                    else ""
                )
                for name, before, after in change.changed()
            ]
        )
    return head


def _note(change: ResourceChange) -> str:
    if change.renamed_from:
        return f" (renamed from {change.renamed_from})"
    if change.action is Action.DELETE and change.resource.kind == "mailbox":
        # Said plainly: a rename without previous_aliases lands here too.
        return f" (its mail goes to retained/ until `mailwright purge {change.resource.name}`)"
    return ""


def render_text(plan: Plan) -> Iterator[tuple[str, str]]:
    """Blocks of lines (joined by newlines, none at the end) with their style: one block a
    resource change, so that a plan of millions of lines is made and written as it goes."""
    for finding in plan.unsafe:
        yield f"Warning: {finding}; apply will refuse without --force.", "red bold"
    for warning in plan.warnings:
        yield f"Warning: {warning}.", "yellow"
    if plan.drift:
        yield (
            "Drift: artifacts changed outside mailwright since the last apply (restored by apply):",
            "magenta",
        )
        yield "\n".join(f"  ! {d.artifact} ({d.problem})" for d in plan.drift), "magenta"
    if not plan.has_changes:
        yield "No changes. The applied organization matches the specs.", "green"
        return
    if plan.changes:
        yield "mailwright will perform the following actions:", "bold"
        for change in plan.changes:
            yield _change_text(change, plan.moves.get(change.address)), STYLE[change.action]
    if plan.runtime_actions:
        yield "Runtime:", "bold"
        yield "\n".join(f"  {a.action} {a.host} ({a.reason})" for a in plan.runtime_actions), "cyan"
    yield plan.summary_line(), "bold"


def render_summary(plan: Plan) -> list[str]:
    """Only the changed addresses, one a line."""
    return [f"{c.action.symbol} {c.address}" for c in plan.changes]


def plan_json(plan: Plan) -> dict[str, Any]:
    counts = plan.counts()
    return {
        "format_version": PLAN_FORMAT_VERSION,
        "resource_changes": [
            {
                "address": c.address,
                "kind": c.resource.kind,
                "name": c.resource.name,
                "organization": c.resource.organization,
                "actions": [c.action.value],
                "before": c.before.shown() if c.before else None,
                "after": c.after.shown() if c.after else None,
                "sensitive": sorted(c.resource.sensitive),
                **_rename_and_move(plan, c),
            }
            for c in plan.changes
        ],
        "runtime_actions": [
            {"host": a.host, "action": a.action, "reason": a.reason} for a in plan.runtime_actions
        ],
        "drift": [{"artifact": d.artifact, "problem": d.problem} for d in plan.drift],
        "unsafe": plan.unsafe,
        "warnings": plan.warnings,
        "summary": {
            "add": counts[Action.CREATE],
            "change": counts[Action.UPDATE],
            "destroy": counts[Action.DELETE],
        },
    }


def _rename_and_move(plan: Plan, change: ResourceChange) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if change.before is not None and change.renamed_from:
        found["previous_address"] = change.before.address
    if move := plan.moves.get(change.address):
        found["move"] = {"messages": move[0], "bytes": move[1]}
    return found


def render_json(plan: Plan) -> str:
    """As json.dumps(indent=2, ensure_ascii=False) writes it, at orjson's speed: json's indented
    encoder is pure Python, a minute for a first plan of 100,000 mailboxes."""
    return orjson.dumps(plan_json(plan), option=orjson.OPT_INDENT_2).decode()


def render_markdown(plan: Plan) -> str:
    """For a pull request comment or a CI job summary."""
    out = ["### mailwright plan", "", f"**{plan.summary_line()}**", ""]
    out += [f"> :warning: {finding}; apply needs `--force`." for finding in plan.unsafe]
    out += [f"> :warning: {warning}." for warning in plan.warnings]
    if plan.drift:
        out += ["", "Drift (restored by apply):", ""]
        out += [f"- `{d.artifact}` ({d.problem})" for d in plan.drift]
    if plan.changes:
        out += ["", "<details><summary>Changes</summary>", "", "```diff"]
        for change in plan.changes:
            # A diff block: the symbol in the first column, where the text plan indents it.
            out.append(_change_text(change, plan.moves.get(change.address)).removeprefix("  "))
        out += ["```", "", "</details>"]
    if plan.runtime_actions:
        out += ["", "| host | action | why |", "| --- | --- | --- |"]
        out += [f"| {a.host} | {a.action} | {a.reason} |" for a in plan.runtime_actions]
    return "\n".join(out) + "\n"
