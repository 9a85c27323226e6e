"""Logging of the runtime's processes: the standard `logging` module, to stderr (which the
supervisor keeps in `<state>/runtime/logs/<server>.log`, and systemd in its journal).

One logger per room (`mailwright.mta`, `mailwright.ims`, `mailwright.transfer`, ...). A record
about a message or a connection carries them as `extra={"peer": ..., "message_id": ...}`, and
every line ends with them, as aiosmtpd's `mail.log` names the peer of each session. An error
is logged with its cause, once, where it is handled; a client's connection never sees it.
"""

from __future__ import annotations

import logging
import sys

CONTEXT = ("peer", "message_id")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = [f"{key}={getattr(record, key)}" for key in CONTEXT if hasattr(record, key)]
        if not context:
            return line
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} [{' '.join(context)}]{newline}{rest}"


def setup(process: str) -> None:
    """Log lines of this process (`host athena`, `supervisor`) to stderr, INFO and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
