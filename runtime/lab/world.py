"""The `internet` namespace: the world outside the mail organizations, made of real programs.

- BIND `named` is the root server: a root zone "." that delegates every organization domain
  (with glue) and itself answers for example.net, whose MX is the lab Postfix.
- `unbound` is the recursive resolver every lab namespace uses (its /etc/netns resolv.conf),
  starting from root hints that name only the lab's root server.
- Postfix receives mail for example.net and sends mail anywhere else by MX.

Addresses come from a TEST-NET (RFC 5737 §3: documentation only, never routed on the Internet;
192.0.2.0/24 unless the machine itself uses it) and names are RFC 2606's example.net, so nothing
here can mean a real machine.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from mailwright.runtime.lab.netns import (
    LabError,
    LabNetwork,
    LabServiceError,
    LabUnavailableError,
    ip_json,
)

INTERNET = "internet"
ROOT_SERVER_NAME = "a.root-servers.net."
WORLD_DOMAIN = "example.net"
WORLD_MX_NAME = "mx.example.net."
# RFC 5737 §3's three documentation networks, in the order the lab tries them: a machine may
# itself sit on TEST-NET-1 (some sandboxes do), and the lab's world must not share its subnet.
TEST_NETS = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
# Small TTLs: a lab is short-lived and a test should never wait on a cached answer.
TTL = 30

Delegations = Mapping[str, Sequence[tuple[str, str]]]


@dataclasses.dataclass(frozen=True)
class WorldAddresses:
    """The internet namespace's addresses: .1 root server, .2 resolver, .25 example.net's MX."""

    network: str = TEST_NETS[0]

    def _host(self, number: int) -> str:
        return str(ipaddress.IPv4Network(self.network)[number])

    @property
    def root_server(self) -> str:
        return self._host(1)

    @property
    def resolver(self) -> str:
        return self._host(2)

    @property
    def mx(self) -> str:
        return self._host(25)

    @property
    def all(self) -> list[str]:
        return [self.root_server, self.resolver, self.mx]

    @classmethod
    def from_addresses(cls, addresses: Sequence[str]) -> WorldAddresses:
        if not addresses:
            raise LabError("the lab has no internet namespace (is it up?)")
        return cls(str(ipaddress.IPv4Network(f"{addresses[0]}/24", strict=False)))


def choose_world(in_use: Iterable[str]) -> WorldAddresses:
    """The first TEST-NET that no network of the root namespace overlaps."""
    used = [ipaddress.IPv4Network(n, strict=False) for n in in_use]
    for candidate in TEST_NETS:
        net = ipaddress.IPv4Network(candidate)
        if not any(net.overlaps(u) for u in used):
            return WorldAddresses(candidate)
    raise LabUnavailableError("the root namespace uses all three RFC 5737 TEST-NETs")


def root_networks() -> list[str]:
    """The IPv4 networks the root namespace has an address in or a route to (not default)."""
    found: list[str] = []
    for entry in ip_json("-4", "addr", "show"):
        for info in entry.get("addr_info", []):
            found.append(f"{info['local']}/{info['prefixlen']}")
    for route in ip_json("-4", "route", "show", "table", "all"):
        destination = str(route.get("dst", "default"))
        if destination != "default" and route.get("type", "unicast") == "unicast":
            found.append(destination if "/" in destination else f"{destination}/32")
    return found


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else f"{name}."


def root_hints(world: WorldAddresses) -> str:
    root = world.root_server
    return f".  {TTL} IN NS {ROOT_SERVER_NAME}\n{ROOT_SERVER_NAME}  {TTL} IN A {root}\n"


def root_zone(delegations: Delegations, world: WorldAddresses) -> str:
    """The root zone: the lab's own root server, example.net, and one delegation per domain.

    A delegation may skip levels (`dcnw.com.` straight from the root, with no `com.` zone):
    `com.` is then an empty non-terminal of the root zone, which resolvers walk through.
    """
    lines = [
        f"$TTL {TTL}",
        f". IN SOA {ROOT_SERVER_NAME} hostmaster.{WORLD_DOMAIN}. 1 3600 600 86400 {TTL}",
        f". IN NS {ROOT_SERVER_NAME}",
        f"{ROOT_SERVER_NAME} IN A {world.root_server}",
        # example.net is not delegated: the root server answers for it itself.
        f"{WORLD_DOMAIN}. IN MX 10 {WORLD_MX_NAME}",
        f"{WORLD_MX_NAME} IN A {world.mx}",
        f"resolver.{WORLD_DOMAIN}. IN A {world.resolver}",
    ]
    glue: dict[tuple[str, str], None] = {}
    for domain in sorted(delegations):
        for server, address in delegations[domain]:
            lines.append(f"{_fqdn(domain)} IN NS {_fqdn(server)}")
            glue[(_fqdn(server), address)] = None
    lines += [f"{server} IN A {address}" for server, address in glue]
    return "\n".join(lines) + "\n"


def check_delegations(delegations: Delegations) -> None:
    for domain, servers in delegations.items():
        name = _fqdn(domain).lower()
        if name in {".", f"{WORLD_DOMAIN}.", "root-servers.net."} or name.endswith(
            f".{WORLD_DOMAIN}."
        ):
            raise LabError(f"delegation {domain!r} would hide the lab's own world names")
        if not servers:
            raise LabError(f"delegation {domain!r} names no name server")


def named_config(directory: Path, listen: str, zones: Mapping[str, Path]) -> str:
    """An authoritative-only named.conf that uses nothing of the system's /etc/bind."""
    zone_blocks = "".join(
        f'zone "{_fqdn(origin)}" {{ type primary; file "{path}"; }};\n'
        for origin, path in sorted(zones.items())
    )
    return (
        "options {\n"
        f'    directory "{directory}";\n'
        f'    pid-file "{directory}/named.pid";\n'
        f'    session-keyfile "{directory}/session.key";\n'
        f'    managed-keys-directory "{directory}";\n'
        f"    listen-on port 53 {{ {listen}; }};\n"
        "    listen-on-v6 { none; };\n"
        "    recursion no;\n"
        # The lab signs nothing, so there is nothing to validate.
        "    dnssec-validation no;\n"
        "    notify no;\n"
        "    allow-query { any; };\n"
        "};\n"
        # No rndc channel: it would listen on 127.0.0.1:953 with the system's key.
        "controls { };\n" + zone_blocks
    )


def unbound_config(directory: Path, world: WorldAddresses, allowed: Sequence[str]) -> str:
    """A recursive resolver on the world's resolver address that starts at the lab's root hints."""
    access = "".join(f"    access-control: {address}/32 allow\n" for address in sorted(allowed))
    return (
        "server:\n"
        "    verbosity: 1\n"
        f"    interface: {world.resolver}\n"
        "    port: 53\n"
        f"    outgoing-interface: {world.resolver}\n"
        "    do-ip4: yes\n"
        "    do-ip6: no\n"
        "    do-daemonize: no\n"
        "    use-syslog: no\n"
        '    chroot: ""\n'
        '    username: ""\n'
        f'    directory: "{directory}"\n'
        f'    pidfile: "{directory}/unbound.pid"\n'
        f'    root-hints: "{directory}/root.hints"\n'
        # No validator and no trust anchor: the lab's zones carry no signatures.
        '    module-config: "iterator"\n'
        "    harden-referral-path: no\n"
        # A host's name server may start after the lab: forget failures and misses quickly.
        "    infra-host-ttl: 2\n"
        "    infra-keep-probing: yes\n"
        "    cache-max-negative-ttl: 1\n"
        "    cache-max-ttl: 30\n"
        "    access-control: 0.0.0.0/0 refuse\n"
        "    access-control: 127.0.0.0/8 allow\n"
        f"{access}"
        # RFC 6761 names unbound answers locally by default; a lab may use them for test orgs.
        '    local-zone: "test." nodefault\n'
        '    local-zone: "invalid." nodefault\n'
        "remote-control:\n"
        "    control-enable: no\n"
    )


POSTFIX_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
# chroot n everywhere: a chrooted daemon would need copies of /etc files in the queue folder.
smtp      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def postfix_main_cf(
    base: Path, uid: int, gid: int, world: WorldAddresses, mynetworks: Sequence[str]
) -> str:
    networks = " ".join(f"{address}/32" for address in ["127.0.0.1", *sorted(mynetworks)])
    return "\n".join(
        [
            "compatibility_level = 3.6",
            f"queue_directory = {base}/spool",
            f"data_directory = {base}/data",
            "mail_owner = postfix",
            f"myhostname = {WORLD_MX_NAME.rstrip('.')}",
            f"mydomain = {WORLD_DOMAIN}",
            "myorigin = $mydomain",
            # example.net is a virtual mailbox domain: no Unix accounts, one Maildir.
            "mydestination =",
            f"inet_interfaces = {world.mx}",
            "inet_protocols = ipv4",
            f"mynetworks = {networks}",
            f"smtp_bind_address = {world.mx}",
            # Other domains by their MX, found through the lab's unbound (resolv.conf).
            "smtp_host_lookup = dns",
            "relayhost =",
            f"virtual_mailbox_domains = {WORLD_DOMAIN}",
            f"virtual_mailbox_base = {base}/mail",
            f"virtual_mailbox_maps = inline:{{ @{WORLD_DOMAIN}={WORLD_DOMAIN}/ }}",
            "virtual_minimum_uid = 1",
            f"virtual_uid_maps = static:{uid}",
            f"virtual_gid_maps = static:{gid}",
            "alias_maps =",
            "alias_database =",
            "biff = no",
            "append_dot_mydomain = no",
            # No syslog in a namespace sandbox: postlogd writes this file (Postfix 3.4+).
            f"maillog_file = {base}/maillog",
            f"maillog_file_prefixes = {base}",
            # A lab message that cannot go is a test failure, not something to retry for days.
            "maximal_queue_lifetime = 1h",
            "minimal_backoff_time = 2s",
            "maximal_backoff_time = 4s",
            "queue_run_delay = 2s",
            "",
        ]
    )


# --- starting the services ------------------------------------------------------------------

_PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.5).close()\n"
    "except OSError:\n"
    "    sys.exit(1)\n"
)


def wait_for_tcp(
    network: LabNetwork,
    name: str,
    address: str,
    port: int,
    *,
    timeout: float = 15,
    process: subprocess.Popen[bytes] | None = None,
    service: str = "a service",
    log: Path | None = None,
) -> None:
    """Wait, from inside namespace `name`, until address:port accepts TCP connections."""
    deadline = time.monotonic() + timeout
    while True:
        probe = network.run(name, [sys.executable, "-c", _PROBE, address, str(port)], check=False)
        if probe.returncode == 0:
            return
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            raise LabServiceError(service, network.namespace(name), log or network.directory)
        time.sleep(0.05)


def start_named(
    network: LabNetwork,
    name: str,
    directory: Path,
    listen: str,
    zones: Mapping[str, str],
) -> subprocess.Popen[bytes]:
    """An authoritative BIND in namespace `name` serving `zones` (origin -> zone text)."""
    network.make_directory(directory)
    files: dict[str, Path] = {}
    for origin, text in zones.items():
        path = directory / f"{_fqdn(origin).rstrip('.') or 'root'}.zone"
        path.write_text(text)
        files[origin] = path
    config = directory / "named.conf"
    config.write_text(named_config(directory, listen, files))
    network.run(name, ["named-checkconf", "-z", str(config)])
    log = directory / "named.log"
    with log.open("wb") as output:
        # -g: foreground, log to stderr; no -u: the lab runs as root and named stays in its ns.
        process = network.popen(name, ["named", "-g", "-c", str(config)], stdout=output)
    wait_for_tcp(network, name, listen, 53, process=process, service="named", log=log)
    return process


def start_unbound(
    network: LabNetwork, directory: Path, world: WorldAddresses
) -> subprocess.Popen[bytes]:
    network.make_directory(directory)
    (directory / "root.hints").write_text(root_hints(world))
    config = directory / "unbound.conf"
    config.write_text(unbound_config(directory, world, network.addresses()))
    network.run(INTERNET, ["unbound-checkconf", str(config)])
    log = directory / "unbound.log"
    with log.open("wb") as output:
        process = network.popen(INTERNET, ["unbound", "-d", "-c", str(config)], stdout=output)
    wait_for_tcp(network, INTERNET, world.resolver, 53, process=process, service="unbound", log=log)
    return process


def postfix_base(network: LabNetwork) -> Path:
    # Postfix's daemons run as the `postfix` user and must walk the path to their data folder
    # and mailboxes, so its tree lives in the lab's /run folder, linked from the lab directory.
    return network.run_directory / "postfix"


def start_postfix(network: LabNetwork, world: WorldAddresses) -> subprocess.Popen[bytes]:
    """The example.net Postfix, from its own config folder: `postfix -c DIR start-fg`."""
    try:
        owner = pwd.getpwnam("postfix")
    except KeyError:
        raise LabUnavailableError("Postfix's `postfix` user does not exist") from None
    base = postfix_base(network)
    network.make_directory(base.parent)
    for folder in ("etc", "spool", "data", "mail"):
        (base / folder).mkdir(parents=True)
    for folder in ("data", "mail"):
        # Written by Postfix's own daemons, which run as the postfix user.
        os.chown(base / folder, owner.pw_uid, owner.pw_gid)
    etc = base / "etc"
    lab_addresses = [a for a in network.addresses() if a not in world.all]
    main_cf = postfix_main_cf(base, owner.pw_uid, owner.pw_gid, world, lab_addresses)
    (etc / "main.cf").write_text(main_cf)
    (etc / "master.cf").write_text(POSTFIX_MASTER_CF)
    link = network.directory / "postfix"
    network.record_path(link, "file")
    link.unlink(missing_ok=True)
    link.symlink_to(base)
    # `check` makes the queue's subfolders with Postfix's owners and modes.
    network.run(INTERNET, ["postfix", "-c", str(etc), "check"])
    process = network.popen(
        INTERNET, ["postfix", "-c", str(etc), "start-fg"], stdout=subprocess.DEVNULL
    )
    log = base / "maillog"
    wait_for_tcp(network, INTERNET, world.mx, 25, process=process, service="postfix", log=log)
    return process
