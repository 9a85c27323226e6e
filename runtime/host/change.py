"""How a change of a host's config reaches its running process: by restart or by reload.

The runtime owns the host contract (`hosts/<server>.json`), so the runtime decides this, once,
for both who ask: the supervisor, which restarts a host or sends it SIGHUP, and the plan's
Runtime section (the compiler reaches it through the launcher seam). Only a change of what the
process listens on needs a new process; everything else (mailboxes, passwords, POP3 and IMS
settings, size limits, and the shared GAL, GWART and zones) is read again on SIGHUP, and every
open POP3 and SMTP session carries on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from mailwright.runtime.contract import ActionName

# What a host's process listens on, by the name a plan shows and its place in the config. Its
# listening sockets and their TLS certificate are made once, at start; and a config of another
# format is read by another version of the host.
LISTENING: dict[str, tuple[str, ...]] = {
    "roles": ("server", "roles"),
    "services": ("server", "services"),
    "tls": ("tls",),
    "format_version": ("format_version",),
}
_PATHS = set(LISTENING.values())
# Top-level keys not compared whole for a reload: those listened on, and the server (its
# roles and services are listened on, its other fields are compared one by one).
_NOT_WHOLE = {path[0] for path in _PATHS if len(path) == 1} | {"server"}
_LAYOUT = '{\n  "'  # how a config the compiler wrote begins


@dataclass(frozen=True)
class HostChange:
    """What differs between two configs of one host, by name: what it listens on (a restart)
    and the rest (a reload)."""

    listening: tuple[str, ...] = ()
    reloaded: tuple[str, ...] = ()


def host_change(before: str, after: str) -> HostChange:
    """The difference between two texts of a host config (the same text: none)."""
    if before == after:
        return HostChange()
    laid_out = all(text.startswith(_LAYOUT) for text in (before, after))
    old, new = (_members(t) if laid_out else _parsed_members(t) for t in (before, after))
    listening = tuple(n for n, path in LISTENING.items() if _at(old, path) != _at(new, path))
    keys = old.keys() | new.keys()
    reloaded = [k for k in keys if k not in _NOT_WHOLE and old.get(k) != new.get(k)]
    was, now = (_parsed(side, "server") or {} for side in (old, new))
    reloaded += [
        f"server.{key}"
        for key in was.keys() | now.keys()
        if ("server", key) not in _PATHS and was.get(key) != now.get(key)
    ]
    return HostChange(listening, tuple(sorted(reloaded)))


def _members(text: str) -> dict[str, str]:
    """A config's top-level members as JSON text, by key, cut from the text as the compiler
    lays it out (sorted keys, two-space indent: each member starts a line with `  "`), so a
    change of one mailbox among 100,000 is seen without parsing 60 MB twice."""
    members = {}
    end = text.rfind("}")  # the object's own closing brace: the last one
    start = 2
    while 0 < start < end:
        following = text.find('\n  "', start, end)
        stop = following if following > 0 else end
        while text[stop - 1] in " \n,":  # the comma and line end that follow the value
            stop -= 1
        colon = text.index('": ', start, stop)
        members[text[start + 3 : colon]] = text[colon + 3 : stop]
        start = following + 1
    return members


def _parsed_members(text: str) -> dict[str, str]:
    """The same for a config laid out otherwise: parsed, each member written compactly."""
    parsed: dict[str, Any] = orjson.loads(text)
    return {k: orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode() for k, v in parsed.items()}


def _parsed(members: Mapping[str, str], key: str) -> Any:
    return orjson.loads(members[key]) if key in members else None


def _at(members: Mapping[str, str], path: tuple[str, ...]) -> Any:
    found = _parsed(members, path[0])
    for key in path[1:]:
        found = found.get(key) if isinstance(found, Mapping) else None
    return found


def runtime_action(
    before: str | None, after: str | None, shared: Sequence[str] = ()
) -> tuple[ActionName, str] | None:
    """(action, reason) for one host, from its config's text before and after (None: absent)
    and the shared artifacts of its organization that changed; None when nothing changes."""
    if before is None:
        return ("start", "new host")
    if after is None:
        return ("stop", "host removed from the spec")
    change = host_change(before, after)
    if change.listening:
        return ("restart", f"listens differently: {', '.join(change.listening)}")
    if reloaded := [*change.reloaded, *shared]:
        return ("reload", f"{', '.join(reloaded)} changed")
    return None
