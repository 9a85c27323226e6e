"""Properties of the spec that hold for any input, checked with hypothesis.

- Site addressing turns any names and any accepted template into an RFC 5321 dot-string local
  part, or says (AddressingError) that it gives none.
- `format_spec` is idempotent and keeps the data, comments included.
- A loaded spec dumped back to YAML loads as the same OrganizationSpec.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from mailwright.runtime.routing import AddressType
from mailwright.schema import Mailbox, OrganizationSpec, Site, SiteAddressing, load_spec
from mailwright.schema.addressing import (
    check_address,
    expand_template,
    is_domain,
    sanitize_local_part,
)
from mailwright.schema.annotations import item_of, model_of
from mailwright.schema.fmt import format_spec
from mailwright.schema.models import Organization
from mailwright.schema.recipients import (
    AddressingError,
    generated_smtp,
    proxy_addresses,
    smtp_template,
)
from mailwright.schema.yamlsource import YamlSyntaxError, parse_yaml
from tests.helpers import ROOT

# The organization specs among examples/ (which also holds other YAML, such as CI configs).
EXAMPLES = sorted(
    p
    for p in (ROOT / "examples").rglob("*.yaml")
    if "\norganization:" in "\n" + p.read_text(encoding="utf-8")
)
HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$iX04azb1umBoKFFAOD8ssg$"
    "RrUVU/3aVCqR7gKEDl2c3bGdmVCJs6yT6U9+tDL1Cxs"
)
# RFC 5321 §4.1.2: Dot-string = Atom *("." Atom), Atom = 1*atext (RFC 5322 §3.2.3).
ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
DOT_STRING = re.compile(rf"{ATOM}(?:\.{ATOM})*")
ORGANIZATION = Organization(name="Acme", domains=("acme.example", "acme.test"))

# Any unicode at all, as people's names are; as a YAML or CSV file carries it (UTF-8: no lone
# surrogate, which YAML refuses as an escape and pydantic cannot take).
UTF8 = st.characters(codec="utf-8")
names = st.text(max_size=30)
aliases = st.from_regex(rf"\A{ATOM}(?:\.{ATOM})*\Z").filter(lambda a: len(a) <= 64)
template_pieces = st.one_of(
    st.sampled_from(["%m", "%g", "%s", "%i", "%d", "%%"]),
    st.builds("%{}{}".format, st.integers(0, 70), st.sampled_from("mgsid")),
    st.builds("%r{}{}".format, UTF8, UTF8),
    st.text(alphabet=st.characters(blacklist_characters="%@", codec="utf-8"), max_size=6),
)

local_templates = st.lists(template_pieces, max_size=8).map("".join)
templates = st.builds(
    "{}{}".format,
    local_templates,
    st.sampled_from(["", "@acme.example", "@Mail.Acme.Example", "@acme.test."]),
)
mailboxes = st.builds(
    Mailbox,
    alias=aliases,
    home_server=st.just("mail"),
    password=st.just(HASH),
    given_name=names,
    surname=names,
    initials=names,
    display_name=st.none() | names,
)


def check_generated_smtp(template: str, mailbox: Mailbox) -> None:
    """The SMTP address `template` gives `mailbox` is local@domain with a dot-string local part
    (or there is none, and AddressingError says so); a refused template raises ValidationError."""
    site = Site(name="HQ", addressing=SiteAddressing(smtp=template))
    try:
        address = generated_smtp(mailbox, site, ORGANIZATION)
    except AddressingError:
        local_template = smtp_template(site, ORGANIZATION).rpartition("@")[0]
        assert sanitize_local_part(expand_template(local_template, mailbox)) == ""
        return
    local, _, domain = address.rpartition("@")
    assert DOT_STRING.fullmatch(local), address
    assert len(local.encode("utf-8")) <= 64
    assert is_domain(domain)
    assert domain == domain.lower()


@settings(deadline=None)
@given(template=templates, mailbox=mailboxes)
def test_site_addressing_yields_a_dot_string_local_part(template: str, mailbox: Mailbox) -> None:
    try:
        check_generated_smtp(template, mailbox)
    except ValidationError:
        # Only a "%r" token swallowing the "@" leaves a template without a domain.
        reject()


@settings(deadline=None)
@given(template=st.text(), mailbox=mailboxes)
def test_any_text_is_refused_as_a_template_or_yields_a_dot_string(
    template: str, mailbox: Mailbox
) -> None:
    try:
        check_generated_smtp(template, mailbox)
    except ValidationError as exc:
        assert exc.error_count() == 1
        assert "smtp" in exc.errors()[0]["loc"]


@settings(deadline=None)
@given(text=st.text())
def test_sanitizing_any_text_gives_a_dot_string_or_nothing(text: str) -> None:
    local = sanitize_local_part(text)
    assert local == "" or (DOT_STRING.fullmatch(local) and len(local) <= 64)


@settings(deadline=None)
@given(template=templates, mailbox=mailboxes)
def test_every_generated_address_is_valid_for_its_type(template: str, mailbox: Mailbox) -> None:
    try:
        site = Site(name="HQ", addressing=SiteAddressing(smtp=template))
    except ValidationError:
        reject()
    try:
        proxies = proxy_addresses(mailbox, site, ORGANIZATION)
    except AddressingError:
        return
    assert sorted(p.type for p in proxies if p.primary) == sorted(AddressType)
    for proxy in proxies:
        assert check_address(proxy.type, proxy.address) is None, proxy


# --- fmt ------------------------------------------------------------------------------------

# Printable text on one line: YAML's own line breaks and controls would need block scalars.
line_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Cf", "Zl", "Zp", "Co", "Cn")),
    max_size=12,
)
scalars = st.one_of(
    line_text,
    st.integers(-(10**6), 10**6),
    st.booleans(),
    st.none(),
    st.sampled_from(["NO", "yes", "0o17", "1e3", "10MB", "12:30", "*", "%m@x.example"]),
)


def documents_of(model: type[Any], depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings shaped like `model`: any of its keys in any order, unknown keys too."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in model.model_fields.items():
        nested, item = model_of(info.annotation), model_of(item_of(info.annotation))
        if nested is not None and depth < 4:
            fields[name] = documents_of(nested, depth + 1)
        elif item is not None and depth < 4:
            # (ruamel.yaml drops comments around empty `- {}` items: none here.)
            fields[name] = st.lists(documents_of(item, depth + 1).filter(bool), max_size=2)
        else:
            fields[name] = scalars | st.lists(scalars, max_size=3)
    keys = st.lists(
        st.sampled_from(sorted(fields)) | st.sampled_from(["zzz_unknown", "colour"]),
        unique=True,
        max_size=6,
    )

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        return {key: draw(fields.get(key, scalars)) for key in draw(keys)}

    return build()


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    """A spec-shaped document as YAML, with comment lines and end-of-line comments about."""
    yaml = YAML()
    yaml.default_flow_style = draw(st.sampled_from([False, None]))
    yaml.width = 4096
    yaml.allow_unicode = True
    # A spec is a block mapping at the top, whatever style its values take.
    document = CommentedMap(draw(documents_of(OrganizationSpec).filter(bool)))
    document.fa.set_block_style()
    out = io.StringIO()
    yaml.dump(document, out)
    lines = out.getvalue().splitlines()
    for number in sorted(draw(st.sets(st.integers(0, len(lines)), max_size=4)), reverse=True):
        lines.insert(number, f"# comment {number}")
    for number in draw(st.sets(st.integers(0, len(lines) - 1), max_size=3)):
        if not lines[number].lstrip().startswith("#") and lines[number].strip() != "-":
            lines[number] += f"  # note {number}"
    return "\n".join(lines) + "\n"


def comments(text: str) -> list[str]:
    return sorted(re.findall(r"# (?:comment|note) \d+", text))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_fmt_is_idempotent_on_the_examples(example: Path) -> None:
    once = format_spec(example.read_text(encoding="utf-8"))
    assert format_spec(once) == once


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=yaml_texts())
def test_fmt_is_idempotent_and_keeps_data_and_comments(text: str) -> None:
    try:
        parse_yaml(text)
    except YamlSyntaxError:
        # ruamel.yaml wrote something libyaml will not read ("?x" in a flow mapping).
        reject()
    try:
        once = format_spec(text)
    except YamlSyntaxError as exc:
        # Refused, never changed: some comments ruamel.yaml cannot carry (see format_spec).
        assert exc.message.startswith("cannot put this file in canonical form"), exc.message
        event("refused")
        return
    assert format_spec(once) == once
    assert parse_yaml(once) == parse_yaml(text)
    assert comments(once) == comments(text)


# --- load -> dump -> load -------------------------------------------------------------------

server_names = st.from_regex(r"\A[a-z][a-z0-9]{0,8}\Z")
labels = st.from_regex(r"\A[a-z](?:[a-z0-9-]{0,10}[a-z0-9])?\Z")


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Specs that validate: unique names and addresses, servers inside the owned domain."""
    domain = f"{draw(labels)}.{draw(st.sampled_from(['example', 'test', 'example.org']))}"
    site_names = draw(
        st.lists(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,15}\Z"), min_size=1, max_size=3).map(
            lambda xs: list({x.casefold(): x for x in xs}.values())
        )
    )
    hosts = iter(draw(st.lists(server_names, min_size=6, max_size=9, unique=True).map(sorted)))
    sites: list[dict[str, Any]] = []
    stores: list[str] = []
    for s, site_name in enumerate(site_names):
        servers = []
        for k in range(draw(st.integers(1, 2))):
            name = next(hosts)
            roles = draw(st.sets(st.sampled_from(["store", "ims", "dns"])).map(sorted))
            if s == k == 0:
                roles = ["dns", "ims", "store"]
            server: dict[str, Any] = {
                "name": name,
                "fqdn": f"{name}.{domain}",
                "ipv4": f"192.0.2.{10 * s + k + 1}",
                "roles": roles,
            }
            if "ims" in roles and draw(st.booleans()):
                server["ims"] = {
                    "address_spaces": [
                        {"type": "SMTP", "pattern": "*", "cost": draw(st.integers(1, 100))},
                        {"type": "X400", "pattern": "c=US;a=*;p=Fabrikam;"},
                        {"type": "MS", "pattern": "FABNET/*", "scope": "site"},
                    ],
                    "max_message_size": draw(st.sampled_from(["10MB", 25_000_000, "25 MiB"])),
                    "relay": {"networks": ["10.0.0.0/8"]},
                    "retry": {"intervals": ["30m", 3600], "give_up": "5d"},
                    "message_formats": [{"domain": "*.partner.example", "format": "uuencode"}],
                }
            if draw(st.booleans()):
                server["protocols"] = {"pop3": {"enabled": draw(st.booleans())}}
            if "store" in roles:
                stores.append(name)
            servers.append(server)
        sites.append(
            {
                "name": site_name,
                "addressing": {
                    "smtp": draw(st.sampled_from(["%m", "%m.%g", f"%m.%1s@{domain}"])),
                    "x400": {
                        "country": draw(st.sampled_from(["US", "NO", "GB", "840"])),
                        "admd": draw(st.sampled_from([" ", "ATTMAIL"])),
                        "prmd": draw(st.none() | st.just("Acme")),
                    },
                },
                "protocols": {
                    "pop3": {
                        "enabled": draw(st.booleans()),
                        "message_format": draw(st.sampled_from(["mime", "uuencode"])),
                        "charset": draw(st.sampled_from(["utf-8", "UTF8", "latin-1"])),
                        "idle_timeout": draw(st.sampled_from([600, "10m", "1h30m"])),
                    }
                },
                "servers": servers,
            }
        )
    mailboxes = []
    for alias in draw(st.lists(server_names, max_size=6, unique=True)):
        mailbox: dict[str, Any] = {
            "alias": alias,
            "home_server": draw(st.sampled_from(stores)),
            "password": HASH,
            "given_name": draw(names),
            # The alias in the surname keeps generated X.400 addresses unique.
            "surname": f"{alias} {draw(names)}",
            "display_name": draw(st.none() | names),
            "proxy_addresses": [f"smtp:{alias}.second@{domain}"],
        }
        if draw(st.booleans()):
            mailbox["size_limit"] = draw(st.sampled_from(["50MB", 1_000_000]))
            mailbox["protocols"] = {"pop3": {"enabled": False, "charset": "ISO-8859-1"}}
        mailboxes.append(mailbox)
    return {
        "organization": {"name": "Acme", "domains": [domain]},
        "sites": sites,
        "mailboxes": mailboxes,
        "dns": [{"domain": domain, "nameservers": [sites[0]["servers"][0]["name"]]}],
    }


def dump_yaml(data: Any) -> str:
    # A YAML 1.2 dumper: it quotes whatever a 1.2 loader would not read back as a string.
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.allow_unicode = True
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def assert_dump_loads_back(spec_path: Path) -> None:
    loaded = load_spec(spec_path)
    dumped = spec_path.with_name("dumped.yaml")
    data = loaded.spec.model_dump(mode="json", exclude_defaults=True)
    dumped.write_text(dump_yaml(data), encoding="utf-8")
    again = load_spec(dumped)
    assert again.spec == loaded.spec
    assert again.mailboxes == loaded.mailboxes
    assert again.proxies == loaded.proxies


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_load_dump_load_to_an_equal_spec(example: Path, tmp_path: Path) -> None:
    # The whole example folder comes along: directory imports are relative to the spec.
    folder = tmp_path / "example"
    shutil.copytree(example.parent, folder)
    assert_dump_loads_back(folder / example.name)


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=valid_specs())
def test_generated_specs_load_dump_load_to_an_equal_spec(data: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "spec.yaml"
        spec.write_text(dump_yaml(data), encoding="utf-8")
        assert_dump_loads_back(spec)
