"""Network namespaces, one bridge and veth pairs: the lab's wiring, and a registry to undo it.

Every namespace, link, file and process the lab makes is written to the registry (`lab.json` in
the directory the caller gives) *before* it is made, so `LabNetwork(dir).down()` undoes a lab
whose maker was killed half way: a second `down`, or the next `up`, finds what the first left.
Names carry a prefix derived from that directory (`mw` + 6 hex), so two labs never collide and
`down` can also find its own leftovers by name when the registry itself was lost.

Processes are stopped by pid only (never pkill/killall): the recorded pids (checked against
their start time, so a reused pid is left alone) and every pid `ip netns pids` finds inside a
lab namespace, which also catches the children of a daemon such as Postfix's master.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

REGISTRY_NAME = "lab.json"
# Inside every namespace the lab's veth end has this name; the root end is `<prefix>v<index>`.
LAB_INTERFACE = "eth0"
# The kernel's IFNAMSIZ is 16 bytes with the terminating NUL.
MAX_INTERFACE_NAME = 15
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_STOP_GRACE = 5.0
# Scratch space for daemons that drop root and must walk the whole path to their files (Postfix):
# a caller's lab directory may sit under a 0700 folder, as pytest's tmp_path does.
RUN_ROOT = Path("/run/mailwright-lab")
NETNS_ETC = Path("/etc/netns")


class LabError(Exception):
    """A lab problem; the message is one line that says what and where."""


class LabUnavailableError(LabError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the network lab is unavailable: {reason}")


class LabIsolationError(LabError):
    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"the network lab is not isolated: {problem}")


class LabCommandError(LabError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        detail = f": {lines[-1].strip()}" if lines else ""
        super().__init__(f"`{shlex.join(self.argv)}` exited with {returncode}{detail}")


class LabServiceError(LabError):
    def __init__(self, service: str, namespace: str, log: Path) -> None:
        self.service = service
        self.log = log
        super().__init__(f"{service} did not start in namespace {namespace}; its log is {log}")


@dataclasses.dataclass(frozen=True)
class LabHost:
    """One namespace of the lab: a mail server host by name, with its spec ipv4 address."""

    name: str
    ipv4: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise LabError(f"lab host name {self.name!r} is not lower-case letters, digits, '-'")
        try:
            ipaddress.IPv4Address(self.ipv4)
        except ValueError:
            raise LabError(f"lab host {self.name}: {self.ipv4!r} is not an IPv4 address") from None


def lab_prefix(directory: Path) -> str:
    """`mw` and 6 hex digits of the directory's absolute path: short enough for link names."""
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()
    return f"mw{digest[:6]}"


# --- the registry ---------------------------------------------------------------------------


@dataclasses.dataclass
class ProcessRecord:
    namespace: str
    argv: list[str]
    pid: int | None = None
    # /proc/PID/stat field 22: tells the process we started from a later one with the same pid.
    started: int | None = None


@dataclasses.dataclass
class PathRecord:
    path: str
    # "file": unlink; "dir": rmdir when empty; "tree": remove with everything in it.
    kind: str


@dataclasses.dataclass
class Registry:
    prefix: str
    namespaces: list[str] = dataclasses.field(default_factory=list)
    links: list[str] = dataclasses.field(default_factory=list)
    addresses: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    processes: list[ProcessRecord] = dataclasses.field(default_factory=list)
    paths: list[PathRecord] = dataclasses.field(default_factory=list)

    @classmethod
    def load(cls, path: Path, prefix: str) -> Registry:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(prefix)
        except ValueError:
            # A registry cut short by a crash: `down` still finds the lab's things by prefix.
            return cls(prefix)
        return cls(
            prefix=str(data.get("prefix", prefix)),
            namespaces=[str(n) for n in data.get("namespaces", [])],
            links=[str(n) for n in data.get("links", [])],
            addresses={str(k): [str(a) for a in v] for k, v in data.get("addresses", {}).items()},
            processes=[ProcessRecord(**p) for p in data.get("processes", [])],
            paths=[PathRecord(**p) for p in data.get("paths", [])],
        )

    def save(self, path: Path) -> None:
        # Temp file and rename: a crash leaves the old registry or the new one, never half.
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True))
        temporary.replace(path)


# --- processes ------------------------------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    """The start time of a live process (clock ticks after boot), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _alive(pid: int, children: Mapping[int, subprocess.Popen[bytes]]) -> bool:
    child = children.get(pid)
    if child is not None:
        return child.poll() is None
    return process_start_time(pid) is not None


def stop_pids(pids: Sequence[int], children: Mapping[int, subprocess.Popen[bytes]]) -> None:
    """SIGTERM, a grace period, then SIGKILL: by pid, as the lab never kills by name."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        waiting = [pid for pid in pids if _alive(pid, children)]
        for pid in waiting:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + _STOP_GRACE
        while waiting and time.monotonic() < deadline:
            time.sleep(0.02)
            waiting = [pid for pid in waiting if _alive(pid, children)]
        if not waiting:
            return


# --- commands -------------------------------------------------------------------------------


def _ip(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *arguments]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise LabCommandError(argv, done.returncode, done.stderr)
    return done


def ip_json(*arguments: str) -> list[dict[str, Any]]:
    done = _ip("-j", *arguments, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return []
    data = json.loads(done.stdout)
    return data if isinstance(data, list) else []


def _disable_ipv6(interface: str) -> None:
    # Without this the kernel gives every link an fe80:: address, so the root namespace would
    # have an (IPv6 link-local) address on the lab's bridge and veths.
    knob = Path(f"/proc/sys/net/ipv6/conf/{interface}/disable_ipv6")
    if knob.exists():
        knob.write_text("1\n")


def check_available() -> None:
    """Raise LabUnavailableError unless this process can make network namespaces."""
    if os.geteuid() != 0:
        raise LabUnavailableError(f"it needs root (running as uid {os.geteuid()})")
    if shutil.which("ip") is None:
        raise LabUnavailableError("`ip` (iproute2) is not installed")
    if not Path("/proc/self/ns/net").exists():
        raise LabUnavailableError("this kernel has no network namespaces (/proc/self/ns/net)")


# --- the network ----------------------------------------------------------------------------


class LabNetwork:
    """The namespaces, bridge, veths, addresses, routes, files and processes of one lab."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.prefix = lab_prefix(directory)
        self.registry_path = directory / REGISTRY_NAME
        self.registry = Registry.load(self.registry_path, self.prefix)
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # names

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def run_directory(self) -> Path:
        """This lab's folder under /run (world-traversable; removed by `down`)."""
        return RUN_ROOT / self.prefix

    def namespace(self, name: str) -> str:
        """The kernel's name of the lab namespace `name` (e.g. `mw1a2b3c-athena`)."""
        return f"{self.prefix}-{name}"

    def names(self) -> list[str]:
        return list(self.registry.namespaces)

    def addresses(self, name: str | None = None) -> list[str]:
        """The lab addresses of one namespace, or of all of them."""
        if name is not None:
            return list(self.registry.addresses.get(name, []))
        return [a for addresses in self.registry.addresses.values() for a in addresses]

    def exec_prefix(self, name: str) -> list[str]:
        """The argv prefix that runs a command in the namespace: `lab exec NAME -- COMMAND`."""
        self._known(name)
        return ["ip", "netns", "exec", self.namespace(name)]

    def _known(self, name: str) -> None:
        if name not in self.registry.namespaces:
            known = ", ".join(self.registry.namespaces) or "none"
            raise LabError(f"no lab namespace {name!r} (the lab has: {known})")

    def _save(self) -> None:
        self.registry.save(self.registry_path)

    # building

    def build(self, members: Mapping[str, Sequence[str]]) -> None:
        """Namespaces `members` (name -> its addresses) on one bridge, each with on-link
        routes to every other member's addresses and no default route anywhere."""
        check_available()
        self.down()
        self.registry = Registry(self.prefix)
        self._save()
        seen: dict[str, str] = {}
        for name, addresses in members.items():
            if not _NAME.match(name):
                raise LabError(
                    f"lab namespace name {name!r} is not lower-case letters, digits, '-'"
                )
            for address in addresses:
                if address in seen:
                    raise LabError(f"address {address} is given to both {seen[address]} and {name}")
                seen[address] = name
        if len(f"{self.prefix}v{len(members)}") > MAX_INTERFACE_NAME:
            raise LabError(f"too many lab namespaces ({len(members)}) for interface names")

        self._add_link(self.bridge, "type", "bridge")
        _disable_ipv6(self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, (name, addresses) in enumerate(members.items()):
            self._add_namespace(name, index, list(addresses))
        for name in members:
            namespace = self.namespace(name)
            for other, addresses in members.items():
                if other == name:
                    continue
                for address in addresses:
                    # All namespaces share one L2 bridge: an on-link /32 reaches the owner by ARP.
                    _ip("-n", namespace, "route", "add", f"{address}/32", "dev", LAB_INTERFACE)

    def _add_link(self, link: str, *how: str) -> None:
        self.registry.links.append(link)
        self._save()
        _ip("link", "add", link, *how)

    def _add_namespace(self, name: str, index: int, addresses: list[str]) -> None:
        namespace = self.namespace(name)
        self.registry.namespaces.append(name)
        self.registry.addresses[name] = addresses
        self._save()
        done = _ip("netns", "add", namespace, check=False)
        if done.returncode != 0:
            raise LabUnavailableError(
                f"`ip netns add {namespace}` failed: {done.stderr.strip() or done.returncode}"
            )
        _ip("-n", namespace, "link", "set", "lo", "up")
        veth = f"{self.prefix}v{index}"
        # The peer is born inside the namespace, so no second root-side name is ever needed.
        self._add_link(veth, "type", "veth", "peer", "name", LAB_INTERFACE, "netns", namespace)
        _disable_ipv6(veth)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        for address in addresses:
            _ip("-n", namespace, "addr", "add", f"{address}/32", "dev", LAB_INTERFACE)
        _ip("-n", namespace, "link", "set", LAB_INTERFACE, "up")

    def set_link(self, name: str, up: bool) -> None:
        """Pull or plug the cable of namespace `name`: its veth's bridge end down or up. The
        namespace keeps its addresses and routes (lost carrier, not a link taken down)."""
        self._known(name)
        veth = f"{self.prefix}v{self.registry.namespaces.index(name)}"
        _ip("link", "set", veth, "up" if up else "down")

    # files

    def record_path(self, path: Path, kind: str) -> None:
        """Note a file or directory for `down` to remove; call it before making the thing."""
        if kind not in {"file", "dir", "tree"}:
            raise ValueError(kind)
        self.registry.paths.append(PathRecord(str(path), kind))
        self._save()

    def make_directory(self, path: Path, kind: str = "tree") -> None:
        """Make `path` and any missing parents, each recorded for `down` (deepest last)."""
        missing: list[Path] = []
        current = path
        while not current.exists():
            missing.append(current)
            current = current.parent
        for directory in reversed(missing):
            self.record_path(directory, kind if directory == path else "dir")
            directory.mkdir()

    def write_resolv_conf(self, name: str, nameservers: Sequence[str]) -> Path:
        """/etc/netns/NS/resolv.conf: `ip netns exec` bind-mounts it over /etc/resolv.conf."""
        self._known(name)
        path = NETNS_ETC / self.namespace(name) / "resolv.conf"
        self.make_directory(path.parent, "dir")
        self.record_path(path, "file")
        path.write_text("".join(f"nameserver {address}\n" for address in nameservers))
        return path

    # running things

    def run(
        self,
        name: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to its end in namespace `name`; its output as text."""
        full = [*self.exec_prefix(name), *argv]
        done = subprocess.run(
            full, capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
        if check and done.returncode != 0:
            raise LabCommandError(full, done.returncode, done.stderr)
        return done

    def popen(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stdout: IO[bytes] | int | None = subprocess.DEVNULL,
        stderr: IO[bytes] | int | None = subprocess.STDOUT,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in namespace `name`, recorded by pid for `down`."""
        full = [*self.exec_prefix(name), *argv]
        record = ProcessRecord(namespace=name, argv=list(argv))
        self.registry.processes.append(record)
        self._save()
        # `ip netns exec` execs the command, so this pid is the command's own.
        process = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
        self._children[process.pid] = process
        record.pid = process.pid
        record.started = process_start_time(process.pid)
        self._save()
        return process

    def stop(self, pid: int) -> None:
        """Stop one process this lab started (by pid) and forget it."""
        records = [r for r in self.registry.processes if r.pid == pid]
        if not records:
            raise LabError(f"pid {pid} is not a process of this lab")
        for record in records:
            if record.started is not None and process_start_time(pid) == record.started:
                stop_pids([pid], self._children)
            self.registry.processes.remove(record)
        self._children.pop(pid, None)
        self._save()

    # the safety check

    def assert_isolated(self) -> None:
        """Raise LabIsolationError unless the lab cannot reach, or be reached from, outside.

        Checked: every lab namespace exists, has no default route and no link but its veth;
        the bridge's only ports are lab veths; the root namespace has no address on a lab link,
        no lab address anywhere, no route via a lab link and `ip route get` to every lab address
        leaves by some other link (or fails); no NAT rule names the lab.
        """
        if not self.registry.namespaces:
            raise LabIsolationError(f"no lab is up in {self.directory}")
        self._assert_namespaces_closed()
        self._assert_bridge_closed()
        self._assert_root_outside()
        self._assert_no_nat(set(self.addresses()))

    def _assert_namespaces_closed(self) -> None:
        existing = {entry.get("name") for entry in ip_json("netns", "list")}
        for name in self.registry.namespaces:
            namespace = self.namespace(name)
            if namespace not in existing:
                raise LabIsolationError(f"namespace {namespace} is missing")
            for family in ("-4", "-6"):
                routes = ip_json("-n", namespace, family, "route", "show", "table", "all")
                if any(route.get("dst") == "default" for route in routes):
                    raise LabIsolationError(f"namespace {namespace} has a default route")
            for link in ip_json("-n", namespace, "link", "show"):
                if link.get("ifname") not in {"lo", LAB_INTERFACE}:
                    raise LabIsolationError(
                        f"namespace {namespace} has a link {link.get('ifname')} besides its veth"
                    )

    def _assert_bridge_closed(self) -> None:
        if not ip_json("link", "show", self.bridge):
            raise LabIsolationError(f"bridge {self.bridge} is missing")
        veths = set(self.registry.links) - {self.bridge}
        for port in ip_json("link", "show", "master", self.bridge):
            if port.get("ifname") not in veths:
                raise LabIsolationError(
                    f"bridge {self.bridge} has port {port.get('ifname')}, which is not a lab veth"
                )

    def _assert_root_outside(self) -> None:
        lab_links = set(self.registry.links)
        addresses = set(self.addresses())
        for lab_link in sorted(lab_links):
            for entry in ip_json("addr", "show", "dev", lab_link):
                for info in entry.get("addr_info", []):
                    raise LabIsolationError(
                        f"the root namespace has address {info.get('local')} on lab link {lab_link}"
                    )
        for family in ("-4", "-6"):
            for route in ip_json(family, "route", "show", "table", "all"):
                if route.get("dev") in lab_links:
                    raise LabIsolationError(
                        f"the root namespace routes {route.get('dst')} via lab link "
                        f"{route.get('dev')}"
                    )
        for entry in ip_json("-4", "addr", "show"):
            for info in entry.get("addr_info", []):
                if info.get("local") in addresses:
                    raise LabIsolationError(
                        f"the root namespace has lab address {info.get('local')} "
                        f"on {entry.get('ifname')}"
                    )
        for address in sorted(addresses):
            for route in ip_json("route", "get", address):
                if route.get("dev") in lab_links:
                    raise LabIsolationError(
                        f"the root namespace reaches {address} via lab link {route.get('dev')}"
                    )

    def _assert_no_nat(self, addresses: set[str]) -> None:
        # NAT is what would give a lab address a way to the real network; any rule that names
        # the lab's links or addresses counts, as the lab itself never makes one.
        marks = {self.prefix, *addresses}
        listings = [
            ("nft", ["nft", "list", "ruleset"]),
            ("iptables", ["iptables", "-t", "nat", "-S"]),
            ("iptables-legacy", ["iptables-legacy", "-t", "nat", "-S"]),
        ]
        for tool, argv in listings:
            if shutil.which(tool) is None:
                continue
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            for line in done.stdout.splitlines():
                if any(mark in line for mark in marks):
                    raise LabIsolationError(f"{tool} has a rule about the lab: {line.strip()}")

    # tearing down

    def down(self) -> None:
        """Remove every namespace, link, file and process of this lab; safe to repeat."""
        registry = Registry.load(self.registry_path, self.prefix)
        live = {str(entry.get("name")) for entry in ip_json("netns", "list")}
        namespaces = [self.namespace(name) for name in registry.namespaces]
        # Leftovers of a lab whose registry was lost: the same prefix means the same directory.
        namespaces += sorted(n for n in live if n.startswith(f"{self.prefix}-"))
        recorded = [
            r.pid
            for r in registry.processes
            if r.pid is not None
            and r.started is not None
            and process_start_time(r.pid) == r.started
        ]
        stop_pids(recorded, self._children)
        for namespace in dict.fromkeys(namespaces):
            if namespace not in live:
                continue
            pids = [int(p) for p in _ip("netns", "pids", namespace, check=False).stdout.split()]
            stop_pids(pids, self._children)
            _ip("netns", "del", namespace, check=False)
        links = list(registry.links)
        links += [
            str(entry.get("ifname"))
            for entry in ip_json("link", "show")
            if str(entry.get("ifname", "")).startswith(self.prefix)
        ]
        for link in dict.fromkeys(links):
            if ip_json("link", "show", link):
                _ip("link", "del", link, check=False)
        for record in reversed(registry.paths):
            _remove(Path(record.path), record.kind)
        # Leftovers by prefix again, for a registry that was lost or cut short.
        leftovers = [self.run_directory]
        if NETNS_ETC.is_dir():
            leftovers += sorted(NETNS_ETC.glob(f"{self.prefix}-*"))
        for path in leftovers:
            _remove(path, "tree")
        for child in self._children.values():
            if child.poll() is None:
                child.kill()
            child.wait()
        self._children.clear()
        self.registry_path.unlink(missing_ok=True)
        self.registry = Registry(self.prefix)


def _remove(path: Path, kind: str) -> None:
    if kind == "tree" and path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif kind in {"dir", "tree"} and path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            path.rmdir()
    elif path.is_symlink() or path.exists():
        path.unlink(missing_ok=True)
