"""The host contract: everything the compiler writes and a host reads, typed and versioned.

A host config (`hosts/<server>.json`), the organization's `servers.json`, its GAL and GWART
rows, the runtime actions of a plan, and the ports a host listens on. The runtime owns this
module and the compiler writes through it (`as_json`), so what the compiler writes is what a
host parses (`read_*`). Standard library and orjson only: every host process imports it.

Only the host config carries `format_version`; the shared artifacts it names are compiled
with it, so a host that accepts its config's format reads theirs as well. A file that breaks
the contract raises one ContractError whose message is one line naming the file.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import orjson

from mailwright.runtime.routing import Route

FORMAT_VERSION = 1

Json = dict[str, Any]
Service = Literal["transfer", "pop3", "smtp", "dns"]
ActionName = Literal["start", "restart", "reload", "stop"]

# The spec's services on their well-known ports (SMTP RFC 5321 §4.5.4.2 / IANA 25, POP3
# RFC 1939 110, DNS RFC 1035 53); the internal MTA transfer port is ours.
WELL_KNOWN_PORTS: Mapping[Service, int] = {"transfer": 7025, "pop3": 110, "smtp": 25, "dns": 53}
# Without root the well-known ports are out of reach: the supervisor maps them to these.
UNPRIVILEGED_PORTS: Mapping[Service, int] = {
    "transfer": 7025,
    "pop3": 1110,
    "smtp": 2525,
    "dns": 5353,
}
# Every server runs an MTA (transfer); each role adds one service.
ROLE_SERVICES: Mapping[str, Service] = {"store": "pop3", "ims": "smtp", "dns": "dns"}
# The IMS connector's transfer modes that take mail from the internet, and those that send.
INBOUND_MODES = ("inbound_and_outbound", "inbound_only")
OUTBOUND_MODES = ("inbound_and_outbound", "outbound_only")


class ContractError(Exception):
    """A compiled artifact this host cannot read; the message is one line naming the file."""


class _FormatError(Exception):
    """A host config of another format_version (made a ContractError by `_read`)."""

    def __init__(self, version: object) -> None:
        super().__init__(version)
        self.version = version


def services(roles: Iterable[str]) -> dict[str, int]:
    """The services a server of these roles runs, on their well-known ports."""
    named: list[Service] = ["transfer", *(ROLE_SERVICES[r] for r in roles)]
    return {service: WELL_KNOWN_PORTS[service] for service in named}


@dataclass(frozen=True, slots=True)
class Pop3Settings:
    """POP3 settings after Exchange's inheritance (site, server, mailbox)."""

    enabled: bool
    message_format: str  # "mime" or "uuencode"
    charset: str
    rich_text: bool
    idle_timeout: int  # seconds

    @staticmethod
    def from_json(data: Json) -> Pop3Settings:
        return _pop3_settings(
            data["enabled"],
            data["message_format"],
            data["charset"],
            data["rich_text"],
            data["idle_timeout"],
        )

    def as_json(self) -> Json:
        return dataclasses.asdict(self)


# 100,000 mailboxes share a handful of settings: one object (and one JSON dict) each.
_pop3_settings = functools.lru_cache(maxsize=256)(Pop3Settings)


@functools.lru_cache(maxsize=256)
def _protocols_json(pop3: Pop3Settings) -> Json:
    """A recipient's `protocols` as JSON data, shared by every recipient of those settings:
    read-only, as everything `as_json` returns."""
    return {"pop3": pop3.as_json()}


class Recipient(NamedTuple):
    """A row of the Global Address List (gal.json). A tuple rather than a frozen dataclass: a
    host reads 100,000 of them at every reload, and a tuple is made several times faster."""

    alias: str
    display_name: str
    site: str
    home_server: str
    primary: Mapping[str, str]  # address type -> the primary address of that type
    secondary: tuple[str, ...]  # `type:address`, the type in lower case (Exchange's form)
    pop3: Pop3Settings
    size_limit: int | None  # bytes
    previous_aliases: tuple[str, ...] = ()  # the aliases it had (a rename)

    @classmethod
    def from_json(cls, data: Json) -> Recipient:
        return cls(
            data["alias"],
            data["display_name"],
            data["site"],
            data["home_server"],
            data["primary"],
            tuple(data["secondary"]),
            Pop3Settings.from_json(data["protocols"]["pop3"]),
            data["size_limit"],
            tuple(data.get("previous_aliases", ())),
        )

    def as_json(self) -> Json:
        record = {
            "alias": self.alias,
            "display_name": self.display_name,
            "site": self.site,
            "home_server": self.home_server,
            "protocols": _protocols_json(self.pop3),
            "size_limit": self.size_limit,
            "primary": self.primary,
            "secondary": self.secondary,
        }
        if self.previous_aliases:
            record["previous_aliases"] = self.previous_aliases
        return record


class Mailbox(NamedTuple):
    """A mailbox homed on the host: its GAL row and its password hash (only its home server's
    config carries the hash)."""

    recipient: Recipient
    password_hash: str

    @classmethod
    def from_json(cls, data: Json) -> Mailbox:
        return cls(Recipient.from_json(data), data["password_hash"])

    def as_json(self) -> Json:
        return {**self.recipient.as_json(), "password_hash": self.password_hash}


@dataclass(frozen=True, slots=True)
class Peer:
    """A server of the organization as the others see it: an entry of servers.json."""

    fqdn: str
    ipv4: str
    site: str
    location: str  # "" when the server has none
    roles: tuple[str, ...]
    services: Mapping[str, int]  # service -> port

    @classmethod
    def from_json(cls, data: Json) -> Peer:
        return cls(**_peer_fields(data))

    def serves(self, service: Service) -> bool:
        return service in self.services

    def as_json(self) -> Json:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _peer_fields(data: Json) -> Json:
    return {
        "fqdn": data["fqdn"],
        "ipv4": data["ipv4"],
        "site": data["site"],
        "location": data["location"],
        "roles": tuple(data["roles"]),
        "services": data["services"],
    }


@dataclass(frozen=True, slots=True)
class HostServer(Peer):
    """The server a host config is for."""

    name: str

    @classmethod
    def from_json(cls, data: Json) -> HostServer:
        return cls(**_peer_fields(data), name=data["name"])


@dataclass(frozen=True, slots=True)
class DomainFormat:
    """How the IMS renders mail for matching domains (address-space wildcards * and %)."""

    domain: str
    format: str  # "mime" or "uuencode"
    charset: str | None


@dataclass(frozen=True, slots=True)
class RelayPolicy:
    networks: tuple[str, ...]
    authenticated: bool


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    intervals: tuple[int, ...]  # seconds between attempts; the last one repeats
    give_up: int  # seconds after the first attempt


@dataclass(frozen=True, slots=True)
class ImsSettings:
    """The Internet Mail Service connector's settings (an IMS host's `ims`)."""

    transfer_mode: str
    max_message_size: int  # bytes
    relay: RelayPolicy
    retry: RetrySchedule
    message_formats: tuple[DomainFormat, ...]
    domains: tuple[str, ...] | None

    @classmethod
    def from_json(cls, data: Json) -> ImsSettings:
        relay, retry, domains = data["relay"], data["retry"], data["domains"]
        return cls(
            data["transfer_mode"],
            data["max_message_size"],
            RelayPolicy(tuple(relay["networks"]), relay["authenticated"]),
            RetrySchedule(tuple(retry["intervals"]), retry["give_up"]),
            tuple(
                DomainFormat(f["domain"], f["format"], f["charset"])
                for f in data["message_formats"]
            ),
            None if domains is None else tuple(domains),
        )

    @property
    def inbound(self) -> bool:
        return self.transfer_mode in INBOUND_MODES

    @property
    def outbound(self) -> bool:
        return self.transfer_mode in OUTBOUND_MODES

    def as_json(self) -> Json:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Absolute paths: the runtime never sees the spec's folder."""

    certificate: str
    private_key: str


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Everything one host's runtime needs of its organization (`hosts/<server>.json`)."""

    organization: str
    domains: tuple[str, ...]  # the organization's own SMTP domains
    server: HostServer
    pop3: Pop3Settings  # the server's own, which its mailboxes inherit
    mailboxes: tuple[Mailbox, ...]  # those homed here
    ims: ImsSettings | None  # for a server with the ims role
    tls: TlsFiles | None  # None: a self-signed certificate made at first start
    resolvers: tuple[str, ...]  # the DNS resolvers the spec names for the server; () the system's
    shared: tuple[str, ...]  # the organization's artifacts the host reads too

    @property
    def postmaster(self) -> str:
        return f"postmaster@{self.domains[0]}"

    @property
    def connector(self) -> ImsSettings:
        """The IMS's settings, of a host that serves SMTP (from_json makes sure it has them)."""
        if self.ims is None:
            raise ContractError(f"{self.server.name} has no IMS connector")
        return self.ims

    @classmethod
    def from_json(cls, data: Json) -> HostConfig:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise _FormatError(version)
        ims, tls = data["ims"], data["tls"]
        if ims is None and "smtp" in data["server"]["services"]:
            raise ValueError("a server with the smtp service needs its `ims` settings")
        return cls(
            data["organization"],
            tuple(data["domains"]),
            HostServer.from_json(data["server"]),
            Pop3Settings.from_json(data["pop3"]),
            tuple(Mailbox.from_json(m) for m in data["mailboxes"]),
            None if ims is None else ImsSettings.from_json(ims),
            None if tls is None else TlsFiles(tls["certificate"], tls["private_key"]),
            tuple(data["dns"]["resolvers"]),
            tuple(data["shared"]),
        )

    def as_json(self) -> Json:
        return {
            "format_version": FORMAT_VERSION,
            "organization": self.organization,
            "domains": self.domains,
            "server": self.server.as_json(),
            "pop3": self.pop3.as_json(),
            "mailboxes": [m.as_json() for m in self.mailboxes],
            "ims": None if self.ims is None else self.ims.as_json(),
            "tls": None if self.tls is None else dataclasses.asdict(self.tls),
            "dns": {"resolvers": self.resolvers},
            "shared": self.shared,
        }


@dataclass(frozen=True, slots=True)
class LocalAddress:
    """Where a server of the spec listens in a runtime that does not give it its spec ipv4."""

    address: str
    ports: Mapping[str, int]  # service -> port


@dataclass(frozen=True, slots=True)
class AddressMap:
    """The local runtime's explicit address map, handed to every host in its bundle
    (`addresses.json`): each applied server's spec ipv4 -> the loopback address and ports it
    really listens on, and the runtime's own DNS servers. A bundle without one runs where the
    spec puts it: peers at their `servers.json` ipv4 and ports, the spec's resolvers."""

    hosts: Mapping[str, LocalAddress]  # spec ipv4 -> where it listens
    resolvers: tuple[str, ...]  # "address:port" of the runtime's DNS servers

    @classmethod
    def from_json(cls, data: Json) -> AddressMap:
        return cls(
            {ip: LocalAddress(h["address"], h["ports"]) for ip, h in data["hosts"].items()},
            tuple(data["resolvers"]),
        )

    def as_json(self) -> Json:
        return {
            "hosts": {ip: dataclasses.asdict(h) for ip, h in sorted(self.hosts.items())},
            "resolvers": self.resolvers,
        }


@dataclass(frozen=True, slots=True)
class BundleManifest:
    """`bundle.json`: which server a bundle runs, and the applied serial it was made of (None
    for a bundle made by hand outside any serial). Written last: a folder without it is not a
    bundle yet."""

    organization: str
    server: str
    serial: int | None

    @classmethod
    def from_json(cls, data: Json) -> BundleManifest:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise _FormatError(version)
        return cls(data["organization"], data["server"], data["serial"])

    def as_json(self) -> Json:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}


@dataclass(frozen=True, slots=True)
class RuntimeAction:
    """What applying a plan does to one host's process (runtime/hostchange.py decides)."""

    host: str  # "<org>/<server>"
    action: ActionName
    reason: str


T = TypeVar("T")


def _read(path: Path, kind: str, build: Callable[[Any], T]) -> T:
    """`build` over the JSON of `path`; one ContractError for whatever breaks the contract.
    JSON makes no reference cycles, so the cyclic collector is paused meanwhile: left on, it
    rescans the growing heap again and again (at 100,000 mailboxes, half the reading time)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return build(orjson.loads(path.read_bytes()))
    except _FormatError as exc:
        raise ContractError(
            f"{path} has {kind} format {exc.version}; this mailwright reads format {FORMAT_VERSION}"
        ) from None
    except KeyError as exc:
        raise ContractError(f"{path} is not a {kind}: it has no field {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ContractError(f"{path} is not a {kind}: {exc}") from None
    finally:
        if collecting:
            gc.enable()


def read_host_config(path: Path) -> HostConfig:
    return _read(path, "host config", HostConfig.from_json)


def read_servers(path: Path) -> dict[str, Peer]:
    """servers.json: every server of the organization, by name."""
    return _read(path, "servers file", lambda data: {n: Peer.from_json(p) for n, p in data.items()})


def read_gal(path: Path) -> tuple[Recipient, ...]:
    return _read(path, "GAL", lambda data: tuple(map(Recipient.from_json, data["recipients"])))


def read_gwart(path: Path) -> tuple[Route, ...]:
    return _read(path, "GWART", lambda data: tuple(map(Route.from_json, data["routes"])))


def read_address_map(path: Path) -> AddressMap:
    return _read(path, "address map", AddressMap.from_json)


def read_bundle_manifest(path: Path) -> BundleManifest:
    return _read(path, "bundle", BundleManifest.from_json)
