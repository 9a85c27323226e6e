"""The one place that turns an error into what the user sees on stderr and the exit code.

Commands let library errors propagate and raise `CommandError` for refusals of their own;
`mailwright.compiler.cli.main` hands whatever escapes a command to `report`. An exception that
`report` does not know is a bug, and its traceback is worth more than a tidy line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mailwright.compiler.cli.output import err
from mailwright.compiler.plan import UnsafePlanError
from mailwright.compiler.route import RouteError
from mailwright.compiler.state import StateError
from mailwright.compiler.zones import ZoneError
from mailwright.runtime.bundle import BundleError
from mailwright.runtime.contract import ContractError
from mailwright.runtime.lab import LabError
from mailwright.runtime.submit import SubmitError
from mailwright.runtime.targets import LaunchError

EXIT_FAILURE = 1


class CommandError(Exception):
    """A command refuses, saying why: a missing tool, options that do not go together."""


# Errors whose message is already the sentence the user needs, each printed as one
# "error: ..." line with exit 1.
FAILURES: tuple[type[Exception], ...] = (
    CommandError,
    RouteError,
    StateError,
    UnsafePlanError,
    ZoneError,
    LaunchError,
    SubmitError,
    BundleError,
    ContractError,
    LabError,
)


def message(exc: BaseException) -> str | None:
    """The line printed for `exc`, or None when it is not one of the FAILURES."""
    if isinstance(exc, OSError) and not isinstance(exc, FAILURES):
        # What the operating system refused (a --state that is a file, a read-only file
        # system, a full disk): the path and the reason, never a traceback.
        where = f" {exc.filename}" if exc.filename else ""
        text = f"cannot use{where}: {reason(exc)}"
    elif isinstance(exc, RecursionError):
        text = "the input nests too deeply to read (thousands of levels)"
    elif isinstance(exc, FAILURES):
        text = str(exc)
    else:
        return None
    # One line whatever the message holds: a wrapped line would read as two errors.
    return "error: " + " ".join(text.splitlines())


def report(exc: BaseException) -> int | None:
    """Print what `exc` means to stderr and return the exit code; None when it is not ours.

    Usage errors (exit 2), an abort at a prompt and Ctrl-C (130) are typer's to report: it
    prints them in its own format before it exits, as it always has."""
    line = message(exc)
    if line is None:
        return None
    err.print(line, markup=False)
    return EXIT_FAILURE


def reason(exc: OSError | UnicodeDecodeError) -> str:
    """Why a file could not be read or written, without Python's '[Errno 2]' and repr."""
    return getattr(exc, "strerror", None) or str(exc)


@contextlib.contextmanager
def cannot(what: str) -> Iterator[None]:
    """A file error in the block becomes the command's refusal: 'error: cannot WHAT: why'."""
    try:
        yield
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot {what}: {reason(exc)}") from exc
