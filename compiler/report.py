"""Renderers for validation results: one per output format (text, json, github)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from mailwright.schema import Diagnostic, LoadedSpec, Severity


@dataclass(frozen=True)
class ValidationReport:
    files: Sequence[str]
    specs: Sequence[LoadedSpec]
    diagnostics: Sequence[Diagnostic]

    @property
    def errors(self) -> int:
        return sum(d.severity is Severity.ERROR for d in self.diagnostics)

    @property
    def warnings(self) -> int:
        return len(self.diagnostics) - self.errors

    @property
    def valid(self) -> bool:
        return self.errors == 0


def _plural(count: int, word: str) -> str:
    plural = word + ("es" if word.endswith(("x", "s")) else "s")
    return f"{count} {word if count == 1 else plural}"


def summary(spec: LoadedSpec) -> str:
    servers = sum(len(site.servers) for site in spec.spec.sites)
    addresses = sum(len(p) for p in spec.proxies)
    return (
        f"{spec.path}: organization {spec.name} ({', '.join(spec.spec.organization.domains)}): "
        f"{_plural(len(spec.spec.sites), 'site')}, {_plural(servers, 'server')}, "
        f"{_plural(len(spec.mailboxes), 'mailbox')}, {_plural(addresses, 'proxy address')}"
    )


def render_text(report: ValidationReport) -> list[tuple[str, str]]:
    """Lines with their style: diagnostics, a summary per valid spec, the verdict."""
    lines = [
        (str(d), "red" if d.severity is Severity.ERROR else "yellow") for d in report.diagnostics
    ]
    if report.valid:
        lines += [(summary(spec), "") for spec in report.specs]
    verdict = (
        f"{_plural(len(report.files), 'spec')} valid"
        if report.valid
        else f"{_plural(report.errors, 'error')}"
    )
    if report.warnings:
        verdict += f", {_plural(report.warnings, 'warning')}"
    lines.append((verdict, "green" if report.valid else "red bold"))
    return lines


def render_json(report: ValidationReport) -> str:
    document = {
        "valid": report.valid,
        "counts": {
            "files": len(report.files),
            "errors": report.errors,
            "warnings": report.warnings,
            "organizations": len(report.specs),
            "mailboxes": sum(len(s.mailboxes) for s in report.specs),
        },
        "diagnostics": [d.as_dict() for d in report.diagnostics],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def _escape_data(text: str) -> str:
    # GitHub Actions workflow commands escape %, CR and LF in data; : and , too in properties.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(report: ValidationReport) -> list[str]:
    return [
        f"::{d.severity} file={_escape_property(d.position.file)},line={d.position.line},"
        f"col={d.position.column},title={_escape_property(d.code)}::{_escape_data(d.message)}"
        for d in report.diagnostics
    ]
