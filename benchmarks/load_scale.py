"""How long loading a spec takes, and how much memory it needs, as organizations grow.

For each size (1k, 10k, 100k mailboxes by default) it writes a synthetic organization to a
temporary directory twice: once with every mailbox in the YAML file, once with the mailboxes in
CSV files imported through `directory_import` (one a site). Every load runs in a fresh child
process, so neither time nor memory carries over from one measurement to the next. It prints
the parse + validate time (`mailwright.schema.load_spec` called in the child), the child's peak
resident set size, and, from one more run under tracemalloc, the peak of Python allocations
during the load. It also times the `mailwright validate` command as a subprocess, start-up
included, on the 10k specs: the issue's target is at most 2 s for the 10k YAML.

One argon2id hash is made once and used by every mailbox: hashing 100,000 would take hours.

Run: .venv/bin/python benchmarks/load_scale.py [--sizes 1000 10000 100000] [--repeat 3]
     [--keep DIR]. A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import argon2

TARGET_SIZE = 10_000
TARGET_SECONDS = 2.0
DOMAIN = "bench.example"
CSV_HEADER = (
    "alias,given_name,surname,home_server,password,proxy_addresses,protocols.pop3.enabled\n"
)


@dataclass(frozen=True)
class Shape:
    mailboxes: int
    sites: int
    servers_per_site: int

    @property
    def servers(self) -> int:
        return self.sites * self.servers_per_site

    @property
    def stores_per_site(self) -> int:
        # Each site has one IMS and one DNS server; the rest are stores.
        return self.servers_per_site - 2


def shape_for(mailboxes: int) -> Shape:
    """Sites of 10 servers: 10 sites for 1k mailboxes, 32 for 10k, 100 (1,000 servers) for 100k."""
    return Shape(mailboxes, min(100, max(1, round(math.sqrt(mailboxes / 10)))), 10)


@dataclass(frozen=True)
class Mailbox:
    alias: str
    given_name: str
    surname: str
    home_server: str
    proxy: str
    pop3_off: bool


def _server_name(site: int, kind: str, number: int) -> str:
    return f"s{site:03d}-{kind}{number}"


def _ipv4(site: int, number: int) -> str:
    return f"10.{64 + site // 256}.{site % 256}.{10 + number}"


def _mailboxes(shape: Shape) -> list[Mailbox]:
    result = []
    for n in range(shape.mailboxes):
        site, rest = divmod(n, max(1, -(-shape.mailboxes // shape.sites)))
        store = rest % shape.stores_per_site
        alias = f"u{n:06d}"
        result.append(
            Mailbox(
                alias=alias,
                given_name=f"Given{n}",
                surname=f"Surname{n}",
                home_server=_server_name(site, "store", store),
                # Every tenth mailbox has a secondary address; every seventh turns POP3 off.
                proxy=f"smtp:alt.{alias}@{DOMAIN}" if n % 10 == 0 else "",
                pop3_off=n % 7 == 0,
            )
        )
    return result


def _organization_yaml(shape: Shape, imports: list[str]) -> str:
    out = [
        f"organization:\n  name: Bench\n  domains: [{DOMAIN}]\n",
        "sites:\n",
    ]
    for s in range(shape.sites):
        out.append(
            f"  - name: site-{s:03d}\n"
            f'    addressing: {{smtp: "%g.%s@{DOMAIN}", x400: {{prmd: Bench}}, '
            f"msmail: {{network: BENCH, postoffice: S{s:03d}}}}}\n"
            f"    locations: [hall-{s:03d}]\n"
            "    servers:\n"
        )
        for j in range(shape.stores_per_site):
            name = _server_name(s, "store", j)
            out.append(
                f"      - {{name: {name}, fqdn: {name}.{DOMAIN}, ipv4: {_ipv4(s, j)}, "
                f"location: hall-{s:03d}, roles: [store]}}\n"
            )
        ims, dns = _server_name(s, "ims", 0), _server_name(s, "dns", 0)
        out.append(
            f"      - name: {ims}\n"
            f"        fqdn: {ims}.{DOMAIN}\n"
            f"        ipv4: {_ipv4(s, 100)}\n"
            "        roles: [ims]\n"
            "        ims:\n"
            "          address_spaces:\n"
            f'            - {{type: SMTP, pattern: "*", cost: {1 + s % 100}}}\n'
            f'            - {{type: SMTP, pattern: "*.s{s:03d}.example", cost: 1, scope: site}}\n'
            f"          relay: {{networks: [10.{64 + s // 256}.{s % 256}.0/24]}}\n"
            f"      - {{name: {dns}, fqdn: {dns}.{DOMAIN}, ipv4: {_ipv4(s, 101)}, roles: [dns]}}\n"
        )
    if imports:
        out.append("directory_import:\n")
        out += [f"  - path: {path}\n" for path in imports]
    nameservers = ", ".join(_server_name(s, "dns", 0) for s in range(min(2, shape.sites)))
    out.append(
        f"dns:\n  - domain: {DOMAIN}\n    nameservers: [{nameservers}]\n"
        "    records:\n      - {name: www, type: A, value: 192.0.2.80}\n"
    )
    return "".join(out)


def _mailboxes_yaml(mailboxes: list[Mailbox], password: str) -> str:
    out = ["mailboxes:\n"]
    for m in mailboxes:
        out.append(
            f"  - alias: {m.alias}\n"
            f"    home_server: {m.home_server}\n"
            f"    password: {password}\n"
            f"    given_name: {m.given_name}\n"
            f"    surname: {m.surname}\n"
        )
        if m.proxy:
            out.append(f'    proxy_addresses: ["{m.proxy}"]\n')
        if m.pop3_off:
            out.append("    protocols: {pop3: {enabled: false}}\n")
    return "".join(out)


def _mailboxes_csv(mailboxes: list[Mailbox], password: str) -> str:
    rows = [CSV_HEADER]
    for m in mailboxes:
        pop3 = "false" if m.pop3_off else ""
        rows.append(
            f'{m.alias},{m.given_name},{m.surname},{m.home_server},"{password}",{m.proxy},{pop3}\n'
        )
    return "".join(rows)


@dataclass(frozen=True)
class Spec:
    path: Path
    # The spec and the CSV files it imports.
    mib: float


def write_specs(shape: Shape, directory: Path, password: str) -> dict[str, Spec]:
    """The same organization as one YAML file and as YAML plus one CSV file a site."""
    mailboxes = _mailboxes(shape)
    directory.mkdir(parents=True, exist_ok=True)
    yaml_path = directory / "org.yaml"
    yaml_path.write_text(
        _organization_yaml(shape, []) + _mailboxes_yaml(mailboxes, password), encoding="utf-8"
    )
    by_site: dict[str, list[Mailbox]] = {}
    for m in mailboxes:
        by_site.setdefault(m.home_server.split("-")[0], []).append(m)
    imports = []
    (directory / "directory").mkdir(exist_ok=True)
    for site, members in sorted(by_site.items()):
        name = f"directory/{site}.csv"
        (directory / name).write_text(_mailboxes_csv(members, password), encoding="utf-8")
        imports.append(name)
    csv_path = directory / "org-csv.yaml"
    csv_path.write_text(_organization_yaml(shape, imports), encoding="utf-8")
    csv_bytes = sum((directory / p).stat().st_size for p in [csv_path.name, *imports])
    return {
        "yaml": Spec(yaml_path, yaml_path.stat().st_size / 2**20),
        "yaml+csv": Spec(csv_path, csv_bytes / 2**20),
    }


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def measure(path: Path, traced: bool) -> dict[str, float]:
    """In the child process: load once; report time, mailbox count and peak memory.

    With `traced`, tracemalloc records the peak of Python allocations during the load; it slows
    the load down, so a traced run's time is not reported.
    """
    from mailwright.schema import load_spec  # noqa: PLC0415 - the import is not what we time

    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    loaded = load_spec(path)
    seconds = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20 if traced else 0.0
    return {
        "seconds": seconds,
        "mailboxes": float(len(loaded.mailboxes)),
        "warnings": float(len(loaded.warnings)),
        "peak_rss_mib": _peak_rss_mib(),
        "traced_peak_mib": traced_peak,
    }


@dataclass(frozen=True)
class Result:
    size: int
    form: str
    servers: int
    sites: int
    file_mib: float
    seconds: float
    peak_rss_mib: float
    traced_peak_mib: float


def _run_child(path: Path, traced: bool = False) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--measure", str(path), *(["--traced"] if traced else [])],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"measuring {path} failed:\n{done.stderr}")
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def _cli() -> list[str]:
    beside = Path(sys.executable).parent / "mailwright"
    found = str(beside) if beside.exists() else shutil.which("mailwright")
    if found is None:
        raise SystemExit("the mailwright command is not installed")
    return [found]


def _wall(command: list[str], repeat: int) -> tuple[float, int]:
    """Best wall time of `repeat` runs, and the exit code of the last."""
    best, code = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        code = subprocess.run(command, capture_output=True, check=False).returncode
        best = min(best, time.perf_counter() - start)
    return best, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per measurement below 100k (best time kept)"
    )
    parser.add_argument("--keep", type=Path, help="write the specs here and keep them")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.traced)))
        return

    # One hash for every mailbox (argon2id is slow on purpose).
    password = argon2.PasswordHasher().hash("benchmark")
    results: list[Result] = []
    cli_rows: list[tuple[str, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="mailwright-bench-") as tmp:
        root = args.keep or Path(tmp)
        startup, code = _wall([*_cli(), "--help"], args.repeat)
        cli_rows.append(("mailwright --help (start-up only)", startup, code))
        for size in args.sizes:
            shape = shape_for(size)
            specs = write_specs(shape, root / str(size), password)
            for form, spec in specs.items():
                repeat = 1 if size >= 100_000 else args.repeat
                runs = [_run_child(spec.path) for _ in range(repeat)]
                runs.append(_run_child(spec.path, traced=True))
                if any(int(r["mailboxes"]) != size or r["warnings"] for r in runs):
                    raise SystemExit(f"{spec.path}: expected {size} mailboxes, got {runs[0]}")
                results.append(
                    Result(
                        size=size,
                        form=form,
                        servers=shape.servers,
                        sites=shape.sites,
                        file_mib=spec.mib,
                        seconds=min(r["seconds"] for r in runs[:-1]),
                        peak_rss_mib=max(r["peak_rss_mib"] for r in runs[:-1]),
                        traced_peak_mib=runs[-1]["traced_peak_mib"],
                    )
                )
                if size == TARGET_SIZE:
                    wall, code = _wall([*_cli(), "validate", str(spec.path)], args.repeat)
                    cli_rows.append(
                        (f"mailwright validate, {size:,} mailboxes, {form}", wall, code)
                    )
    _print(results, cli_rows)


def _print(results: list[Result], cli_rows: list[tuple[str, float, int]]) -> None:
    print("load_spec (parse + validate + semantic checks), each run in a fresh child process")
    header = (
        f"{'mailboxes':>9}  {'form':<8}  {'sites':>5}  {'servers':>7}  {'input MiB':>9}  "
        f"{'seconds':>7}  {'mailboxes/s':>11}  {'peak RSS MiB':>12}  {'traced peak MiB':>15}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.size:>9,}  {r.form:<8}  {r.sites:>5}  {r.servers:>7}  {r.file_mib:>9.1f}  "
            f"{r.seconds:>7.2f}  {r.size / r.seconds:>11,.0f}  {r.peak_rss_mib:>12.0f}  "
            f"{r.traced_peak_mib:>15.0f}"
        )
    print(
        "seconds: best run; peak RSS: the whole child process (interpreter and imports included);\n"
        "traced peak: Python allocations during load_spec alone (tracemalloc, separate run)\n"
    )
    print("mailwright command, wall time of a subprocess (best run)")
    for label, seconds, code in cli_rows:
        print(f"  {label:<48} {seconds:>6.2f} s  (exit {code})")
    target = [(s, code) for label, s, code in cli_rows if label.endswith("mailboxes, yaml")]
    if target:
        seconds, code = target[0]
        verdict = "meets" if seconds <= TARGET_SECONDS and code == 0 else "MISSES"
        print(
            f"\ntarget: a {TARGET_SIZE:,}-mailbox YAML spec validates in at most "
            f"{TARGET_SECONDS:.0f} s: {verdict} it ({seconds:.2f} s, exit {code})"
        )


if __name__ == "__main__":
    main()
