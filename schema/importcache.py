"""A cache of the CSV directory imports that loaded cleanly: a plan of a 100,000-mailbox
organization re-reads, re-validates and re-addresses only the files that changed.

An entry is keyed by everything its result depends on: the code that made it (this package's
sources, pydantic's and Python's versions), the spec file's bytes (its sites, servers and
addressing make the addresses) and the CSV file's bytes. It holds the CSV's shape (to locate
problems found later in the run), the validated mailboxes and their proxy addresses, pickled:
the folder sits in the state directory, which is already trusted with the password hashes and
with what gets applied; its files are readable by their owner only. A torn or unreadable entry
is a miss, never an error: the import is simply done again.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import platform
from dataclasses import dataclass, field
from pathlib import Path

import pydantic

from mailwright.schema.addressing import ProxyAddress
from mailwright.schema.models import Mailbox


@dataclass(frozen=True)
class CachedImport:
    columns: list[str]
    row_lines: list[int]
    mailboxes: tuple[Mailbox, ...]
    proxies: tuple[tuple[ProxyAddress, ...], ...]


def _code_digest() -> bytes:
    digest = hashlib.sha256(f"{pydantic.VERSION} {platform.python_version()}".encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.digest()


@dataclass
class ImportCache:
    folder: Path
    _used: set[str] = field(default_factory=set)
    _code: bytes = field(default_factory=_code_digest)

    def key(self, spec: bytes, index: int, csv: bytes) -> str:
        digest = hashlib.sha256(self._code)
        for part in (hashlib.sha256(spec).digest(), str(index).encode(), csv):
            digest.update(len(part).to_bytes(8, "big") + part)
        return digest.hexdigest()

    def get(self, key: str) -> CachedImport | None:
        self._used.add(key)
        try:
            found = pickle.loads((self.folder / key).read_bytes())
        except Exception:  # any unreadable entry (torn, older, not ours) is only a miss
            return None
        return found if isinstance(found, CachedImport) else None

    def put(self, key: str, entry: CachedImport) -> None:
        """Best effort: a cache that cannot be written only makes the next load slower."""
        self._used.add(key)
        temp = self.folder / f".{key}.{os.getpid()}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                pickle.dump(entry, handle, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(temp, self.folder / key)
        except OSError:
            temp.unlink(missing_ok=True)

    def prune(self) -> None:
        """Entries this run did not use are for files that no longer look like that."""
        for path in self.folder.glob("*") if self.folder.is_dir() else ():
            if path.name not in self._used and not path.name.startswith("."):
                path.unlink(missing_ok=True)
