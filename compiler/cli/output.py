"""Where the commands print: rich consoles for stdout and stderr, and styled bulk output."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from rich.console import Console

# Both resolve sys.stdout / sys.stderr when they print, so in-process callers can capture them.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

WRITE_BATCH = 1024  # blocks of lines joined into one write


def write_styled(blocks: Iterable[tuple[str, str]]) -> None:
    """Blocks of lines to stdout, each line between its style's ANSI escapes where rich would
    colour (a terminal, or FORCE_COLOR) and plain elsewhere. Written directly and in batches:
    through rich, a first plan of 100,000 mailboxes (two million lines) took many minutes."""
    escapes: dict[str, tuple[str, str]] = {}
    batch: list[str] = []
    for text, style in blocks:
        if style not in escapes:
            escapes[style] = _escapes(style)
        start, end = escapes[style]
        batch.append(start + text.replace("\n", f"{end}\n{start}") + end if start else text)
        if len(batch) == WRITE_BATCH:
            sys.stdout.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        sys.stdout.write("\n".join(batch) + "\n")
    sys.stdout.flush()


def _escapes(style: str) -> tuple[str, str]:
    """What rich writes to stdout before and after a line in `style`: nothing when it would not
    colour, and then exactly its escapes (NO_COLOR, the terminal's colours) when it would."""
    with out.capture() as captured:
        out.print("x", style=style or None, markup=False, end="")
    start, _, end = captured.get().partition("x")
    return start, end
