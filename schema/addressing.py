"""Proxy addresses and Exchange site addressing.

Every recipient has one primary address of each type (SMTP, X.400, MS Mail) generated from its
site's addressing templates, plus any secondary addresses the spec lists. Exchange writes a proxy
address as `TYPE:address`, the type in capitals for the primary address and in lower case for a
secondary one (`SMTP:jane@dcnw.com`, `smtp:j.doe@dcnw.com`).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple, Protocol

# The address types and the X.400 text form are the runtime's too (its router reads them from
# the compiled artifacts), so they live in its standard-library-only routing module.
from mailwright.runtime.routing import AddressType, parse_x400

# RFC 5322 §3.2.3 atext: the characters a dot-atom local part may hold besides ".".
_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# RFC 5321 §4.5.3.1.1: a local part is at most 64 octets.
MAX_LOCAL_PART = 64
# X.400 printable string (X.208), without the ";" and "=" that separate attributes in text form.
_X400_PRINTABLE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 '()+,-./:?"
)
# Upper bounds from X.411 for the attributes Exchange generates.
X400_LIMITS = {"c": 3, "a": 16, "p": 16, "o": 64, "s": 40, "g": 16, "i": 5, "q": 3, "cn": 64}
MS_PART_MAX = 10


def is_domain(text: str) -> bool:
    labels = text.rstrip(".").split(".")
    return len(text) <= 253 and len(labels) >= 2 and all(_LABEL.match(x) for x in labels)


def is_local_part(text: str) -> bool:
    return len(text) <= MAX_LOCAL_PART and bool(_DOT_ATOM.match(text))


def check_address(kind: AddressType, text: str) -> str | None:
    """Why `text` is not a valid address of `kind`, or None when it is."""
    if kind is AddressType.SMTP:
        local, at, domain = text.rpartition("@")
        if not at or not is_local_part(local) or not is_domain(domain):
            return f"'{text}' is not an SMTP address (local-part@domain, RFC 5321)"
        return None
    if kind is AddressType.X400:
        try:
            attributes = parse_x400(text)
        except ValueError as exc:
            return str(exc)
        if "c" not in attributes or not ({"s", "cn"} & attributes.keys()):
            return f"'{text}' is not an X.400 address: it needs c= and s= (or cn=)"
        return None
    parts = text.split("/")
    if len(parts) != 3 or not all(0 < len(p) <= MS_PART_MAX for p in parts):
        return (
            f"'{text}' is not an MS Mail address: NETWORK/POSTOFFICE/MAILBOX, each 1-10 characters"
        )
    return None


class ProxyAddress(NamedTuple):
    """Ordered by type, then address; a tuple, because a 100,000-mailbox organization makes
    300,000 of them and a tuple is made several times faster than a frozen dataclass."""

    type: AddressType
    address: str
    primary: bool = False

    @property
    def key(self) -> tuple[AddressType, str]:
        """What must be unique across an organization: addresses compare case-insensitively."""
        return (self.type, self.address.casefold())

    @classmethod
    def parse(cls, text: str) -> ProxyAddress:
        prefix, sep, address = text.partition(":")
        try:
            kind = AddressType(prefix.upper())
        except ValueError:
            raise ValueError(
                f"'{text}' is not a proxy address: write TYPE:address with TYPE one of "
                "SMTP, X400, MS (upper case for the primary address, lower case for a secondary)"
            ) from None
        if not sep or (problem := check_address(kind, address)):
            raise ValueError(problem or f"'{text}' has no address after the type")
        return cls(kind, address, primary=prefix.isupper())

    def __str__(self) -> str:
        prefix = self.type.value if self.primary else self.type.value.lower()
        return f"{prefix}:{self.address}"


class Person(Protocol):
    """What a template reads from a recipient."""

    @property
    def alias(self) -> str: ...
    @property
    def given_name(self) -> str: ...
    @property
    def surname(self) -> str: ...
    @property
    def initials(self) -> str: ...
    @property
    def display(self) -> str: ...


# Exchange site addressing tokens: %m alias, %g given name, %s surname, %i initials,
# %d display name, optionally with a length (%1g = first letter of the given name);
# %rxy replaces x by y in every token that follows (x == y deletes x); %% is a literal %.
_TOKEN = re.compile(r"%(?:r(.)(.)|(\d*)([mgsid])|(%))", re.DOTALL)
_TEMPLATE_CHECK = re.compile(r"%(?!r..|\d*[mgsid]|%)", re.DOTALL)


def check_template(template: str) -> str | None:
    if bad := _TEMPLATE_CHECK.search(template):
        return (
            f"unknown token '{template[bad.start() : bad.start() + 2]}' in '{template}' "
            "(tokens: %m %g %s %i %d, %<n>g for the first n characters, %rxy, %%)"
        )
    return None


_FIELDS = {"m": "alias", "g": "given_name", "s": "surname", "i": "initials", "d": "display"}


@dataclass(frozen=True)
class _Part:
    """A literal, or a recipient attribute cut to `count` characters with `replacements` made."""

    literal: str = ""
    attribute: str = ""
    count: int = 0
    replacements: tuple[tuple[str, str], ...] = ()


@functools.lru_cache(maxsize=256)
def _compile_template(template: str) -> tuple[_Part, ...]:
    replacements: list[tuple[str, str]] = []
    parts: list[_Part] = []
    pos = 0
    for token in _TOKEN.finditer(template):
        parts.append(_Part(template[pos : token.start()]))
        pos = token.end()
        old, new, count, name, percent = token.groups()
        if old is not None:
            replacements.append((old, "" if old == new else new))
        elif percent:
            parts.append(_Part("%"))
        else:
            parts.append(_Part("", _FIELDS[name], int(count or 0), tuple(replacements)))
    parts.append(_Part(template[pos:]))
    return tuple(p for p in parts if p.literal or p.attribute)


def expand_template(template: str, person: Person) -> str:
    """Substitute the tokens of an Exchange addressing template, literally (no sanitizing)."""
    out: list[str] = []
    for part in _compile_template(template):
        if not part.attribute:
            out.append(part.literal)
            continue
        value: str = getattr(person, part.attribute)
        if part.count:
            value = value[: part.count]
        for x, y in part.replacements:
            value = value.replace(x, y)
        out.append(value)
    return "".join(out)


def _keep_only(allowed: frozenset[str]) -> dict[int, None]:
    """A str.translate table deleting every ASCII character outside `allowed`."""
    return {code: None for code in range(128) if chr(code) not in allowed}


_LOCAL_PART_TABLE = _keep_only(_ATEXT | {"."})
_X400_TABLE = _keep_only(_X400_PRINTABLE)
_MS_TABLE = _keep_only(frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"))


def _ascii(text: str) -> str:
    """Accents folded (NFKD), anything else outside ASCII dropped."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def sanitize_local_part(text: str) -> str:
    """A valid RFC 5321 dot-string from any text: accents folded, illegal characters dropped,
    dots neither leading, trailing nor doubled; at most 64 octets. May return ""."""
    kept = _ascii(text).translate(_LOCAL_PART_TABLE)
    dotted = ".".join(part for part in kept.split(".") if part)
    return dotted[:MAX_LOCAL_PART].rstrip(".")


def sanitize_x400(text: str, limit: int) -> str:
    return _ascii(text).translate(_X400_TABLE).strip()[:limit].strip()


def sanitize_ms(text: str) -> str:
    return _ascii(text).upper().translate(_MS_TABLE)[:MS_PART_MAX]
