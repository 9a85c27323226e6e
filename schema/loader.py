"""Loading specs: read, parse, validate, check; every problem located at file:line:column.

Structure is validated by pydantic; a mailbox that fails it is left out of the semantic checks
while the rest are still checked, so one run reports as much as can be known.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, TypeAdapter, ValidationError

from mailwright.schema.addressing import ProxyAddress
from mailwright.schema.annotations import model_at
from mailwright.schema.csvsource import CsvSource, did_you_mean
from mailwright.schema.diagnostics import (
    Diagnostic,
    Position,
    Problem,
    Severity,
    SpecError,
    SpecPath,
    sorted_diagnostics,
)
from mailwright.schema.importcache import CachedImport, ImportCache
from mailwright.schema.models import (
    PATTERN_HELP,
    DirectoryImport,
    Mailbox,
    OrganizationSpec,
    Pop3Overrides,
)
from mailwright.schema.semantics import Related, check_organization
from mailwright.schema.yamlsource import YamlSource, YamlSyntaxError

_MAILBOXES = TypeAdapter(list[Mailbox])
# pydantic names Python's containers ("a valid tuple", "instance of Site"); say it in YAML's words.
_CONTAINER_WORDS = {
    "model_type": "expected a mapping of keys to values",
    "dict_type": "expected a mapping of keys to values",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
}
CSV_COLUMNS = [f for f in Mailbox.model_fields if f != "protocols"] + [
    f"protocols.pop3.{f}" for f in Pop3Overrides.model_fields
]


class Source(Protocol):
    def locate(self, path: SpecPath, at_key: bool = False) -> Position: ...


@dataclass(frozen=True)
class LoadedSpec:
    """A valid organization: the spec, every mailbox (YAML's, then each CSV's) and its addresses."""

    path: Path
    spec: OrganizationSpec
    mailboxes: tuple[Mailbox, ...]
    proxies: tuple[tuple[ProxyAddress, ...], ...]
    warnings: tuple[Diagnostic, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.organization.name

    def locate(self, path: SpecPath) -> Position:
        """Where a path into the spec file stands, for problems found after loading."""
        return _locate(self, path)


@dataclass
class _Load:
    """The work of loading one spec file, with the sources that locate its problems."""

    path: Path
    yaml: YamlSource | None = None
    csv: dict[int, CsvSource] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    located: list[Diagnostic] = field(default_factory=list)
    cache: ImportCache | None = None
    spec_bytes: bytes = b""
    # Mailbox index -> addresses, for the mailboxes of cached imports.
    known: dict[int, tuple[ProxyAddress, ...]] = field(default_factory=dict)
    # Imports done afresh that the cache may keep: index -> (key, first mailbox, count).
    fresh: dict[int, tuple[str, int, int]] = field(default_factory=dict)

    def source(self, path: SpecPath) -> tuple[Source, SpecPath]:
        if path[:1] == ("directory_import",) and len(path) > 2 and path[2] in ("rows", "header"):
            return self.csv[int(path[1])], path[2:]
        assert self.yaml is not None
        return self.yaml, path

    def locate(self, problem: Problem) -> Diagnostic:
        if self.yaml is None:
            position = Position(str(self.path), 1, 1)
        else:
            source, inner = self.source(problem.path)
            position = source.locate(inner, problem.at_key)
        message = problem.message
        if isinstance(problem, Related):
            source, inner = self.source(problem.related)
            message += f" (at {source.locate(inner)})"
        return Diagnostic(position, problem.severity, problem.code, message)


def load_spec(path: str | Path) -> LoadedSpec:
    """Load one organization; raises SpecError with every diagnostic when it has errors."""
    loaded, diagnostics = _load(Path(path))
    if loaded is None:
        raise SpecError(diagnostics)
    return loaded


def load_specs(paths: Iterable[str | Path], cache: Path | None = None) -> list[LoadedSpec]:
    """Load organizations meant to run together; raises SpecError when any has errors."""
    loaded, diagnostics = check_specs(paths, cache)
    if any(d.severity is Severity.ERROR for d in diagnostics):
        raise SpecError(diagnostics)
    return loaded


def check_specs(
    paths: Iterable[str | Path], cache: Path | None = None
) -> tuple[list[LoadedSpec], list[Diagnostic]]:
    """The organizations that loaded, and every diagnostic of all of them, sorted.

    Organizations meant to run together must not clash with each other. A file named twice
    (`*.yaml` and then one of them again) is loaded once rather than clashing with itself.
    `cache`: a folder that keeps CSV imports that loaded cleanly (see importcache).
    """
    unique: dict[Path, Path] = {}
    for path in paths:
        unique.setdefault(Path(path).resolve(), Path(path))
    imports = ImportCache(cache) if cache is not None else None
    results = [_load(path, imports) for path in unique.values()]
    if imports is not None:
        imports.prune()
    diagnostics = [d for _, found in results for d in found]
    loaded = [spec for spec, _ in results if spec is not None]
    diagnostics += _check_together(loaded)
    return loaded, sorted_diagnostics(diagnostics)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Loading makes millions of objects and hardly any cycles; left on, the cyclic collector
    rescans the growing heap again and again (a 100,000-mailbox spec loads 2-3 times slower).
    What was made meanwhile lives on (the spec, the artifacts), so it is frozen out of later
    collections too: otherwise the first one after the pause scans it all once more."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
            gc.enable()


def _load(
    path: Path, cache: ImportCache | None = None
) -> tuple[LoadedSpec | None, list[Diagnostic]]:
    work = _Load(path, cache=cache)
    with gc_paused():
        result = _read_and_check(work)
        diagnostics = work.located + [work.locate(p) for p in work.problems]
    if result is None or any(d.severity is Severity.ERROR for d in diagnostics):
        return None, diagnostics
    spec, mailboxes, proxies = result
    warnings = tuple(sorted_diagnostics(diagnostics))
    return LoadedSpec(path, spec, mailboxes, proxies, warnings), diagnostics


def _read_and_check(
    work: _Load,
) -> tuple[OrganizationSpec, tuple[Mailbox, ...], tuple[tuple[ProxyAddress, ...], ...]] | None:
    data = _parse(work)
    if data is None:
        return None
    raw_mailboxes = data.pop("mailboxes", None) if isinstance(data, dict) else None
    spec = _validate(work, OrganizationSpec, data, ())
    mailboxes = (
        _validate_mailboxes(work, raw_mailboxes, ("mailboxes",))
        if raw_mailboxes is not None
        else []
    )
    for k, entry in enumerate(spec.directory_import if spec else ()):
        mailboxes += _import_csv(work, k, entry, len(mailboxes))
    if spec is None or any(p.severity is Severity.ERROR for p in work.problems):
        return None
    problems, proxies = check_organization(spec, mailboxes, work.path.parent, work.known)
    work.problems += problems
    _keep_imports(work, mailboxes, proxies)
    spec = spec.model_copy(
        update={"mailboxes": tuple(m for p, m in mailboxes if p[0] == "mailboxes")}
    )
    return spec, tuple(m for _, m in mailboxes), tuple(proxies)


def _parse(work: _Load) -> Any:
    """The YAML document as plain data, or None after recording why it cannot be had."""
    name = str(work.path)
    try:
        work.spec_bytes = work.path.read_bytes()
        text = work.spec_bytes.decode("utf-8-sig")
    except OSError as exc:
        work.located.append(_at(name, 1, 1, "unreadable", f"cannot read spec: {exc.strerror}"))
        return None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        column = exc.start - exc.object.rfind(b"\n", 0, exc.start)
        work.located.append(_at(name, line, column, "encoding", "the file is not UTF-8 text"))
        return None
    try:
        data = YamlSource(name, text).load()
    except YamlSyntaxError as exc:
        work.located.append(_at(name, exc.line, exc.column, "yaml-syntax", exc.message))
        return None
    if data is None:
        # An empty file (or only comments) is no organization, not a valid one.
        work.located.append(
            _at(name, 1, 1, "empty", "the spec is empty: it needs organization and sites")
        )
        return None
    work.yaml = YamlSource(name, text)
    return data


def _at(file: str, line: int, column: int, code: str, message: str) -> Diagnostic:
    return Diagnostic(Position(file, line, column), Severity.ERROR, code, message)


def _validate(work: _Load, model: type[BaseModel], data: Any, prefix: SpecPath) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        work.problems += _problems(exc, prefix, model)
        return None


def _problems(exc: ValidationError, prefix: SpecPath, model: Any) -> list[Problem]:
    errors = exc.errors()
    # pydantic also calls a sequence too short when items failed; the items say it better.
    return [
        _problem(e, prefix, model)
        for e in errors
        if e["type"] != "too_short"
        or not any(
            len(o["loc"]) > len(e["loc"]) and o["loc"][: len(e["loc"])] == e["loc"] for o in errors
        )
    ]


def _validate_mailboxes(work: _Load, raw: Any, prefix: SpecPath) -> list[tuple[SpecPath, Mailbox]]:
    """All mailboxes at once (fast), and only on failure one by one to keep the good ones."""
    try:
        return [((*prefix, i), m) for i, m in enumerate(_MAILBOXES.validate_python(raw))]
    except ValidationError as exc:
        if not isinstance(raw, list):
            work.problems += _problems(exc, prefix, list[Mailbox])
            return []
    good = []
    for i, item in enumerate(raw):
        if (mailbox := _validate(work, Mailbox, item, (*prefix, i))) is not None:
            good.append(((*prefix, i), mailbox))
    return good


def _import_csv(
    work: _Load, k: int, entry: DirectoryImport, start: int
) -> list[tuple[SpecPath, Mailbox]]:
    """Import `k`'s mailboxes, which follow the `start` mailboxes loaded before them."""
    file = work.path.parent / entry.path
    try:
        data = file.read_bytes()
        text = data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        work.problems.append(
            Problem(
                ("directory_import", k, "path"), "unreadable", f"cannot read {entry.path}: {reason}"
            )
        )
        return []
    source = work.csv[k] = CsvSource(str(file), text)
    prefix = ("directory_import", k, "rows")
    key = work.cache.key(work.spec_bytes, k, data) if work.cache else ""
    if work.cache and (cached := work.cache.get(key)):
        source.columns, source.row_lines = cached.columns, cached.row_lines
        work.known.update(enumerate(cached.proxies, start))
        return [((*prefix, i), m) for i, m in enumerate(cached.mailboxes)]
    defaults = {"home_server": entry.home_server} if entry.home_server else {}
    rows, header_problems = source.read(CSV_COLUMNS, defaults)
    work.problems += [
        Problem(("directory_import", k, *p.path), p.code, p.message) for p in header_problems
    ]
    imported = _validate_mailboxes(work, rows, prefix)
    if key:
        work.fresh[k] = (key, start, len(imported))
    return imported


def _keep_imports(
    work: _Load,
    mailboxes: Sequence[tuple[SpecPath, Mailbox]],
    proxies: Sequence[tuple[ProxyAddress, ...]],
) -> None:
    """Cache the fresh imports without a problem of their own (one named in their rows)."""
    troubled = {p.path[1] for p in work.problems if p.path[:1] == ("directory_import",)}
    for k, (key, start, count) in work.fresh.items():
        if work.cache and k not in troubled:
            source, end = work.csv[k], start + count
            work.cache.put(
                key,
                CachedImport(
                    source.columns,
                    source.row_lines,
                    tuple(m for _, m in mailboxes[start:end]),
                    tuple(proxies[start:end]),
                ),
            )


def _problem(error: Any, prefix: SpecPath, model: Any) -> Problem:
    loc: SpecPath = tuple(error["loc"])
    kind = error["type"]
    last = loc[-1] if loc else ""
    if kind == "missing":
        return Problem((*prefix, *loc[:-1]), "missing-key", f"missing required key '{last}'")
    if kind == "extra_forbidden":
        known = model_at(model, loc[:-1])
        hint = did_you_mean(str(last), list(known.model_fields) if known else [])
        return Problem((*prefix, *loc), "unknown-key", f"unknown key '{last}'{hint}", at_key=True)
    if kind == "value_error":
        message = str(error["ctx"]["error"])
    elif kind == "string_pattern_mismatch" and error["ctx"]["pattern"] in PATTERN_HELP:
        message = f"'{error['input']}' is not {PATTERN_HELP[error['ctx']['pattern']]}"
    elif kind in _CONTAINER_WORDS:
        message = _CONTAINER_WORDS[kind]
    else:
        message = error["msg"]
    field_name = next((step for step in reversed(loc) if isinstance(step, str)), None)
    if field_name and kind != "value_error":
        message = f"{field_name}: {message}"
    return Problem((*prefix, *loc), "invalid-value", message)


def _check_together(specs: Sequence[LoadedSpec]) -> list[Diagnostic]:
    """Organizations on one network: distinct names, domains and server addresses."""
    diagnostics: list[Diagnostic] = []
    owners: dict[tuple[str, str], tuple[LoadedSpec, SpecPath]] = {}
    for loaded in specs:
        for kind, value, path in _shared_names(loaded.spec):
            first, first_path = owners.setdefault((kind, value.casefold()), (loaded, path))
            if first is not loaded:
                message = (
                    f"{kind} '{value}' of organization '{loaded.name}' is already used by "
                    f"organization '{first.name}' (at {_locate(first, first_path)})"
                )
                diagnostics.append(
                    Diagnostic(
                        _locate(loaded, path),
                        Severity.ERROR,
                        "clash-between-organizations",
                        message,
                    )
                )
    return diagnostics


def _shared_names(spec: OrganizationSpec) -> Iterable[tuple[str, str, SpecPath]]:
    yield "organization name", spec.organization.name, ("organization", "name")
    for i, domain in enumerate(spec.organization.domains):
        yield "domain", domain, ("organization", "domains", i)
    for i, site in enumerate(spec.sites):
        for j, server in enumerate(site.servers):
            # Hosts of every organization share one runtime state directory, by server name.
            yield "server name", server.name, ("sites", i, "servers", j, "name")
            yield "IPv4 address", str(server.ipv4), ("sites", i, "servers", j, "ipv4")
            yield "fqdn", server.fqdn, ("sites", i, "servers", j, "fqdn")


def _locate(loaded: LoadedSpec, path: SpecPath) -> Position:
    return YamlSource(str(loaded.path), loaded.path.read_text(encoding="utf-8-sig")).locate(path)
