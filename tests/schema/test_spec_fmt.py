"""`format_spec`: keys in schema order, comments and the author's style kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailwright.schema.fmt import format_spec
from mailwright.schema.yamlsource import YamlSyntaxError, parse_yaml
from tests.helpers import ROOT

# The organization specs among examples/ (which also holds other YAML, such as CI configs).
EXAMPLES = sorted(
    p
    for p in (ROOT / "examples").rglob("*.yaml")
    if "\norganization:" in "\n" + p.read_text(encoding="utf-8")
)

MESSY = """\
# head comment
sites:   # the sites
- servers:
    - roles: [store, ims]   # trailing
      ipv4: 192.0.2.1
      name: mail
      fqdn: mail.acme.example
      colour: blue
  name: HQ

# before organization
organization:
    domains: [acme.example]
    name: "Acme"  # quoted on purpose

# before mailboxes
mailboxes:
- password: $2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW
  home_server: mail
  alias: ann
# the end
"""

CANONICAL = """\
# head comment

# before organization
organization:
  name: "Acme"    # quoted on purpose
  domains: [acme.example]
sites:   # the sites
  - name: HQ
    servers:
      - name: mail
        fqdn: mail.acme.example
        ipv4: 192.0.2.1
        roles: [store, ims] # trailing
        colour: blue

# before mailboxes
mailboxes:
  - alias: ann
    home_server: mail
    password: $2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW
# the end
"""


def test_keys_follow_the_schema_with_comments_and_quotes_kept() -> None:
    # An end-of-line comment keeps its column where it can (ruamel's round trip).
    assert format_spec(MESSY) == CANONICAL


def test_canonical_text_is_left_as_it_is() -> None:
    assert format_spec(CANONICAL) == CANONICAL


def test_formatting_keeps_the_data() -> None:
    assert parse_yaml(format_spec(MESSY)) == parse_yaml(MESSY)


def test_a_blank_line_closing_a_reordered_mapping_stays_at_its_end() -> None:
    text = (
        "mailboxes:\n"
        "  - alias: pat\n"
        "    given_name: Pat\n"
        "    home_server: athena\n"
        "    password: x\n"
        "\n"
        "dns:\n"
        "  - domain: dcnw.com\n"
    )
    assert format_spec(text) == (
        "mailboxes:\n"
        "  - alias: pat\n"
        "    home_server: athena\n"
        "    password: x\n"
        "    given_name: Pat\n"
        "\n"
        "dns:\n"
        "  - domain: dcnw.com\n"
    )


def test_a_comment_above_a_key_moves_with_it() -> None:
    text = (
        "sites:\n"
        "  - servers: []\n"
        "    # Exchange site names cannot change later.\n"
        "    name: HQ\n"
        "    locations: [east]\n"
    )
    # Above a key that comes first in a list item means above the item's dash.
    formatted = format_spec(text)
    assert formatted == (
        "sites:\n"
        "    # Exchange site names cannot change later.\n"
        "  - name: HQ\n"
        "    locations: [east]\n"
        "    servers: []\n"
    )
    assert format_spec(formatted) == formatted


def test_a_comment_above_a_nested_key_moves_with_it() -> None:
    text = "organization:\n  domains: [a.example]\n  # The directory name.\n  name: A\n"
    assert format_spec(text) == (
        "organization:\n  # The directory name.\n  name: A\n  domains: [a.example]\n"
    )


def test_trailing_spaces_go_and_a_final_newline_comes() -> None:
    assert format_spec("organization:   \n  name: Acme   ") == "organization:\n  name: Acme\n"


def test_unknown_keys_keep_their_order_after_the_known_ones() -> None:
    text = "zeta: 1\nsites: []\nalpha: 2\norganization: {}\n"
    assert format_spec(text) == "organization: {}\nsites: []\nzeta: 1\nalpha: 2\n"


def test_values_of_unknown_shape_are_left_alone() -> None:
    text = "organization: [b, a]\nsites: {z: 1, a: 2}\n"
    assert format_spec(text) == text


def test_a_syntax_error_says_where() -> None:
    with pytest.raises(YamlSyntaxError) as raised:
        format_spec("organization:\n  name: [Acme\nsites: []\n")
    assert (raised.value.line, raised.value.column) == (3, 6)
    assert raised.value.message.startswith("YAML syntax: ")


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_format_idempotently_without_changing_their_data(example: Path) -> None:
    text = example.read_text(encoding="utf-8")
    once = format_spec(text)
    assert format_spec(once) == once
    assert parse_yaml(once) == parse_yaml(text)
    # Every comment line survives.
    comments = [line.strip() for line in text.splitlines() if line.strip().startswith("#")]
    assert comments == [line.strip() for line in once.splitlines() if line.strip().startswith("#")]
