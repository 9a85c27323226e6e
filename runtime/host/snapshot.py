"""What one host reads of its bundle (runtime/bundle.py): its config, the router over its
organization's GAL and GWART, its per-mailbox tables, its peers' addresses, and, for a DNS
host, the zones it serves; and the TLS contexts of its transfer port, made once per bundle read.

A host reads a snapshot at start and again on each reload, off the event loop (at 100,000
mailboxes indexing the GAL takes seconds), and its running parts then take it in at once.
"""

from __future__ import annotations

import contextlib
import gc
import ssl
from dataclasses import dataclass
from pathlib import Path

from mailwright.runtime.bundle import Bundle, BundleError
from mailwright.runtime.contract import HostConfig, read_servers
from mailwright.runtime.discovery import Peers
from mailwright.runtime.mta.agent import MailboxTables
from mailwright.runtime.mta.router import Router
from mailwright.runtime.nameserver import Authority, load_zones
from mailwright.runtime.tls import transfer_client_context, transfer_server_context


class SnapshotError(Exception):
    """A bundle a host could not read; the host keeps running the one it has."""

    def __init__(self, serial: int | None, why: str) -> None:
        super().__init__(f"cannot read serial {serial}: {why}")
        self.serial = serial
        self.why = why


@dataclass(frozen=True)
class TransferTls:
    """The transfer port's mutual TLS under the organization's CAs (tls/ca.pem): the server
    side for STARTTLS (RFC 3207), the client side for XFER and MOVE to peers."""

    server: ssl.SSLContext
    client: ssl.SSLContext

    @classmethod
    def of(cls, bundle: Bundle) -> TransferTls:
        """BundleError for a bundle without the host's certificate: its host would have to
        serve the transfer port in clear text, to anyone, so it does not start."""
        trust, certificate, key = (bundle.tls_file(n) for n in ("ca.pem", "host.pem", "host.key"))
        if trust is None or certificate is None or key is None:
            raise BundleError(
                f"{bundle.path} has no transfer certificate (tls/host.pem): "
                "make bundles with mailwright bundle or apply"
            )
        return cls(
            transfer_server_context(certificate, key, trust),
            transfer_client_context(trust, certificate, key),
        )


@dataclass(frozen=True)
class Snapshot:
    serial: int | None  # None: a bundle made by hand, outside any applied serial
    path: Path  # the bundle's path as the host was given it (read again at each reload)
    config: HostConfig
    router: Router
    tables: MailboxTables
    authority: Authority | None  # for a host with the dns role
    peers: Peers
    transfer: TransferTls

    @classmethod
    def read(cls, path: Path) -> Snapshot:
        bundle = Bundle.open(path)
        config = bundle.config()  # first: a bundle of another format says so
        transfer = TransferTls.of(bundle)
        authority = None
        if config.server.serves("dns"):
            authority = Authority(load_zones(bundle.zones()))
        router = Router.load(config, bundle.path)
        servers = read_servers(bundle.path / "servers.json")
        peers = Peers(servers, bundle.addresses(), config.resolvers)
        tables = MailboxTables.of(config)
        return cls(bundle.manifest.serial, path, config, router, tables, authority, peers, transfer)

    @classmethod
    def current(cls, path: Path) -> Snapshot:
        """The bundle `path` names now; SnapshotError if it cannot be read, whatever is wrong
        with it."""
        try:
            return cls.read(path)
        except Exception as exc:  # a broken bundle may raise anything its readers raise
            serial = None
            with contextlib.suppress(Exception):  # the serial only names the failure
                serial = Bundle.open(path).manifest.serial
            raise SnapshotError(serial, f"{type(exc).__name__}: {exc}") from exc


def steady_heap() -> None:
    """What a process loaded to serve (its config, the GAL, the GWART) stays until it exits
    or reloads: out of the cyclic collector's sight (gc.freeze), which need not walk it again
    and again; and the young generation collected every 20,000 allocations instead of 700, as
    a message makes thousands (measured with the seed's organization: 1 to 3% less CPU a
    message). The few cycles an SMTP session leaves (aiosmtpd's tables of bound methods) are
    still collected. Called again after a reload (the heap frozen before): what is garbage goes
    first, then the new tables are frozen too. The old ones, without cycles, were freed as
    their last reference went; the cycles of sessions open at that moment stay, a few
    kilobytes a reload."""
    if gc.get_freeze_count():
        gc.collect()
    gc.freeze()
    gc.set_threshold(20_000)
