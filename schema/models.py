"""The organization spec as pydantic models: one YAML file describes one organization.

Models are frozen and refuse unknown keys; field-level rules live here, rules that relate
several parts of the spec live in `semantics`.
"""

from __future__ import annotations

import codecs
import enum
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from mailwright.runtime.routing import AddressType, Scope
from mailwright.schema.addressing import (
    ProxyAddress,
    check_address,
    check_template,
    is_domain,
    is_local_part,
)
from mailwright.schema.addressspace import check_pattern
from mailwright.schema.passwords import check_password_hash
from mailwright.schema.units import Duration, Size


class StrictModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _domain(value: str) -> str:
    if not is_domain(value):
        raise ValueError(f"'{value}' is not a domain name")
    return value.rstrip(".").lower()


def _charset(value: str) -> str:
    try:
        return codecs.lookup(value).name
    except LookupError:
        raise ValueError(f"'{value}' is not a character set Python knows") from None


def _alias(value: str) -> str:
    # The alias is the default SMTP local part (%m), so it must be one (RFC 5321 §4.1.2).
    if not is_local_part(value):
        raise ValueError(
            f"'{value}' is not a valid alias: letters, digits and !#$%&'*+-/=?^_`{{|}}~, "
            "dots between them, at most 64 characters"
        )
    return value


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MS_PART_PATTERN = r"^[A-Za-z0-9_-]{1,10}$"
# Words for the patterns pydantic would otherwise quote at the user.
PATTERN_HELP = {
    NAME_PATTERN: "a name: letters, digits, '_', '.' and '-', starting with a letter or digit, "
    "at most 64 characters",
    MS_PART_PATTERN: "an MS Mail name: 1-10 letters, digits, '_' or '-'",
    r"^([A-Za-z]{2}|[0-9]{3})$": "an X.400 country: two letters or three digits",
}

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
DomainName = Annotated[str, AfterValidator(_domain)]
Charset = Annotated[str, AfterValidator(_charset)]
Alias = Annotated[str, AfterValidator(_alias)]
PasswordHash = Annotated[str, AfterValidator(check_password_hash), Field(repr=False)]


class MessageFormat(enum.StrEnum):
    MIME = "mime"
    UUENCODE = "uuencode"


class Pop3Settings(StrictModel):
    """POP3 as a site sets it for all its servers and mailboxes."""

    enabled: bool = True
    message_format: MessageFormat = MessageFormat.MIME
    charset: Charset = "utf-8"
    rich_text: bool = False
    # RFC 1939 §3: an autologout timer, if any, must be of at least 10 minutes.
    idle_timeout: Annotated[Duration, Field(ge=600)] = 600


class Pop3Overrides(StrictModel):
    """POP3 settings a server or mailbox overrides; what it leaves out it inherits."""

    enabled: bool | None = None
    message_format: MessageFormat | None = None
    charset: Charset | None = None
    rich_text: bool | None = None
    idle_timeout: Annotated[Duration, Field(ge=600)] | None = None


class Protocols(StrictModel):
    pop3: Pop3Settings = Pop3Settings()


class ProtocolOverrides(StrictModel):
    pop3: Pop3Overrides = Pop3Overrides()


class X400Addressing(StrictModel):
    """The site's X.400 originator address: c=country;a=ADMD;p=PRMD;o=organization."""

    country: Annotated[str, Field(pattern=r"^([A-Za-z]{2}|[0-9]{3})$")] = "US"
    admd: Annotated[str, Field(min_length=1, max_length=16)] = " "
    prmd: Annotated[str, Field(min_length=1, max_length=16)] | None = None
    organization: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class MsMailAddressing(StrictModel):
    network: Annotated[str, Field(pattern=MS_PART_PATTERN)] | None = None
    postoffice: Annotated[str, Field(pattern=MS_PART_PATTERN)] | None = None


class SiteAddressing(StrictModel):
    """How a site generates each recipient's primary proxy addresses."""

    # An Exchange template such as "%g.%s@dcnw.com"; without "@domain" the organization's first
    # domain is appended. Default: "%m" (the alias).
    smtp: str = "%m"
    x400: X400Addressing = X400Addressing()
    msmail: MsMailAddressing = MsMailAddressing()

    @field_validator("smtp")
    @classmethod
    def _template(cls, value: str) -> str:
        if problem := check_template(value):
            raise ValueError(problem)
        _, at, domain = value.rpartition("@")
        if at and not is_domain(domain):
            raise ValueError(f"'{domain}' in '{value}' is not a domain name")
        return value


class Role(enum.StrEnum):
    STORE = "store"
    IMS = "ims"
    DNS = "dns"


class TransferMode(enum.StrEnum):
    INBOUND_AND_OUTBOUND = "inbound_and_outbound"
    INBOUND_ONLY = "inbound_only"
    OUTBOUND_ONLY = "outbound_only"
    NONE = "none"

    @property
    def inbound(self) -> bool:
        return self in (TransferMode.INBOUND_AND_OUTBOUND, TransferMode.INBOUND_ONLY)

    @property
    def outbound(self) -> bool:
        return self in (TransferMode.INBOUND_AND_OUTBOUND, TransferMode.OUTBOUND_ONLY)


class AddressSpace(StrictModel):
    """Which foreign addresses a connector offers to carry, at what cost, to whom."""

    type: AddressType
    # `*` any run of characters, `%` any one character. Left out, the space is type-only:
    # it matches every address of its type, and any pattern that matches fits better.
    pattern: str | None = None
    cost: Annotated[int, Field(ge=1, le=100)] = 1
    scope: Scope = Scope.ORGANIZATION

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("type")
        if kind is not None and value is not None and (problem := check_pattern(kind, value)):
            raise ValueError(problem)
        return value


class RelayPolicy(StrictModel):
    """Relaying is refused to everyone but these (RFC 5321 §3.6.2: no open relays)."""

    networks: tuple[IPv4Network, ...] = ()
    authenticated: bool = True


class RetrySchedule(StrictModel):
    # RFC 5321 §4.5.4.1: retry at least 30 minutes apart; give up after at least 4-5 days.
    # The last interval repeats until the give-up time.
    intervals: Annotated[tuple[Annotated[Duration, Field(gt=0)], ...], Field(min_length=1)] = (
        1800,
        1800,
        3600,
        7200,
        14400,
    )
    give_up: Annotated[Duration, Field(gt=0)] = 5 * 86400


class DomainFormat(StrictModel):
    """The message format the IMS uses towards remote domains matching `domain`."""

    domain: str
    format: MessageFormat
    charset: Charset | None = None

    @field_validator("domain")
    @classmethod
    def _domain_pattern(cls, value: str) -> str:
        if problem := check_pattern(AddressType.SMTP, value):
            raise ValueError(problem)
        return value


class ImsConnector(StrictModel):
    """The Internet Mail Service settings of a server with the `ims` role."""

    address_spaces: tuple[AddressSpace, ...] = ()
    # The owned domains whose internet mail this IMS receives (MX); default: all of them.
    domains: tuple[DomainName, ...] | None = None
    transfer_mode: TransferMode = TransferMode.INBOUND_AND_OUTBOUND
    # Postfix's default message_size_limit.
    max_message_size: Size = Size(10_240_000)
    relay: RelayPolicy = RelayPolicy()
    retry: RetrySchedule = RetrySchedule()
    message_formats: tuple[DomainFormat, ...] = ()


class TlsFiles(StrictModel):
    """PEM files, relative to the spec; without them a self-signed pair is made at first start."""

    certificate: str
    private_key: str


class Server(StrictModel):
    name: Name
    fqdn: DomainName
    ipv4: IPv4Address
    # A server whose fqdn lies outside the organization's domains says so explicitly.
    external_fqdn: bool = False
    location: Name | None = None
    roles: tuple[Role, ...] = ()
    protocols: ProtocolOverrides = ProtocolOverrides()
    ims: ImsConnector | None = None
    tls: TlsFiles | None = None
    # The DNS resolvers the server's IMS asks for MX and A records (port 53); none: the
    # resolvers of the machine it runs on (its /etc/resolv.conf).
    resolvers: tuple[IPv4Address, ...] = ()

    @field_validator("roles")
    @classmethod
    def _unique_roles(cls, value: tuple[Role, ...]) -> tuple[Role, ...]:
        if len(set(value)) != len(value):
            raise ValueError("a role is listed twice")
        return value


class Site(StrictModel):
    name: Name
    addressing: SiteAddressing = SiteAddressing()
    protocols: Protocols = Protocols()
    locations: tuple[Name, ...] = ()
    servers: tuple[Server, ...] = ()


def _proxy(value: Any) -> Any:
    if isinstance(value, ProxyAddress):
        return value
    if not isinstance(value, str):
        raise ValueError("a proxy address is a string TYPE:address, e.g. smtp:jane.doe@dcnw.com")
    return ProxyAddress.parse(value)


ProxyAddressText = Annotated[
    ProxyAddress,
    BeforeValidator(_proxy),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": "^(SMTP|smtp|X400|x400|MS|ms):.+"}),
]


class Mailbox(StrictModel):
    alias: Alias
    home_server: Name
    password: PasswordHash
    given_name: str = ""
    surname: str = ""
    initials: str = ""
    display_name: str | None = None
    proxy_addresses: tuple[ProxyAddressText, ...] = ()
    # Aliases this mailbox had before (Terraform's `moved`): the plan shows a rename instead of
    # a removal and a creation, and its mail, UIDLs and queued mail follow it.
    previous_aliases: tuple[Alias, ...] = ()
    protocols: ProtocolOverrides = ProtocolOverrides()
    size_limit: Size | None = None

    @property
    def display(self) -> str:
        """The display name Exchange shows: as given, else `given surname`, else the alias."""
        return (
            self.display_name
            or " ".join(filter(None, (self.given_name, self.surname)))
            or self.alias
        )


class DirectoryImport(StrictModel):
    """Mailboxes bulk-loaded from a CSV file; its header row names Mailbox attributes."""

    path: str
    # The home server of rows that do not name one.
    home_server: Name | None = None


class SoaSettings(StrictModel):
    # The zone's contact mailbox; default hostmaster@<domain>.
    contact: str | None = None

    @field_validator("contact")
    @classmethod
    def _contact(cls, value: str | None) -> str | None:
        # RFC 1035 §3.3.13: RNAME is a mailbox, written here as local-part@domain.
        if value is not None and (problem := check_address(AddressType.SMTP, value)):
            raise ValueError(problem)
        return value

    refresh: Duration = 3600
    retry: Duration = 600
    expire: Duration = 1_209_600
    # RFC 2308 §4: the SOA minimum is the negative-caching TTL.
    minimum: Duration = 300


class ZoneRecord(StrictModel):
    # Relative to the zone ("www", "@") or absolute with a trailing dot.
    name: str = "@"
    type: str
    value: str
    ttl: Duration | None = None


class Zone(StrictModel):
    """DNS settings of one owned domain; MX, A and SPF records are derived by the compiler."""

    domain: DomainName
    ttl: Duration = 3600
    soa: SoaSettings = SoaSettings()
    # Server names of this organization with the `dns` role, or external hosts ending in ".".
    nameservers: Annotated[tuple[str, ...], Field(min_length=1)]
    records: tuple[ZoneRecord, ...] = ()


class Organization(StrictModel):
    name: Name
    display_name: str | None = None
    # The SMTP domains the organization owns: mail to them is accepted and delivered locally.
    domains: Annotated[tuple[DomainName, ...], Field(min_length=1)]


class OrganizationSpec(StrictModel):
    """One YAML file: one organization."""

    organization: Organization
    sites: Annotated[tuple[Site, ...], Field(min_length=1)]
    mailboxes: tuple[Mailbox, ...] = ()
    directory_import: tuple[DirectoryImport, ...] = ()
    dns: tuple[Zone, ...] = ()
