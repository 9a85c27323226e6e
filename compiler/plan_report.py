"""Renderers for a plan: one per output format (text, json, markdown, summary)."""

from __future__ import annotations

import json
from typing import Any

from mailwright.compiler.plan import Action, Plan, ResourceChange

PLAN_FORMAT_VERSION = "1.0"
STYLE = {Action.CREATE: "green", Action.UPDATE: "yellow", Action.DELETE: "red"}


def _value(value: Any) -> str:
    return (
        json.dumps(value, ensure_ascii=False)
        if not isinstance(value, str) or value == "(sensitive)"
        else f'"{value}"'
    )


def _change_lines(change: ResourceChange, move: tuple[int, int] | None = None) -> list[str]:
    lines = [f"  {change.action.symbol} {change.address}{_note(change)}"]
    for name, before, after in change.changed():
        if change.action is Action.CREATE:
            lines.append(f"      {name}: {_value(after)}")
        elif change.action is Action.UPDATE:
            note = (
                f" (move {move[0]} messages, {move[1]} bytes)"
                if move and name == "home_server"
                else ""
            )
            lines.append(f"      {name}: {_value(before)} → {_value(after)}{note}")
    return lines


def _note(change: ResourceChange) -> str:
    if change.renamed_from:
        return f" (renamed from {change.renamed_from})"
    if change.action is Action.DELETE and change.resource.kind == "mailbox":
        # Said plainly: a rename without previous_aliases lands here too.
        return f" (its mail goes to retained/ until `mailwright purge {change.resource.name}`)"
    return ""


def render_text(plan: Plan) -> list[tuple[str, str]]:
    """Lines with their style."""
    lines: list[tuple[str, str]] = []
    for finding in plan.unsafe:
        lines.append((f"Warning: {finding}; apply will refuse without --force.", "red bold"))
    lines += [(f"Warning: {warning}.", "yellow") for warning in plan.warnings]
    if plan.drift:
        lines.append(
            (
                "Drift: artifacts changed outside mailwright since the last apply "
                "(restored by apply):",
                "magenta",
            )
        )
        lines += [(f"  ! {d.artifact} ({d.problem})", "magenta") for d in plan.drift]
    if not plan.has_changes:
        return [*lines, ("No changes. The applied organization matches the specs.", "green")]
    if plan.changes:
        lines.append(("mailwright will perform the following actions:", "bold"))
        for change in plan.changes:
            move = plan.moves.get(change.address)
            lines += [(line, STYLE[change.action]) for line in _change_lines(change, move)]
    if plan.runtime_actions:
        lines.append(("Runtime:", "bold"))
        lines += [(f"  {a.action} {a.host} ({a.reason})", "cyan") for a in plan.runtime_actions]
    lines.append((plan.summary_line(), "bold"))
    return lines


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
    return json.dumps(plan_json(plan), indent=2, ensure_ascii=False)


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
            out += [
                line.replace(f"  {change.action.symbol} ", f"{change.action.symbol} ", 1)
                for line in _change_lines(change, plan.moves.get(change.address))
            ]
        out += ["```", "", "</details>"]
    if plan.runtime_actions:
        out += ["", "| host | action | why |", "| --- | --- | --- |"]
        out += [f"| {a.host} | {a.action} | {a.reason} |" for a in plan.runtime_actions]
    return "\n".join(out) + "\n"
