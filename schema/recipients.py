"""A recipient's proxy addresses: the primaries its site's addressing generates, plus its own."""

from __future__ import annotations

from mailwright.runtime.routing import AddressType, format_x400
from mailwright.schema.addressing import (
    X400_LIMITS,
    ProxyAddress,
    expand_template,
    sanitize_local_part,
    sanitize_ms,
    sanitize_x400,
)
from mailwright.schema.models import Mailbox, Organization, Site


class AddressingError(ValueError):
    """A template yields no usable address for one recipient."""


def smtp_template(site: Site, organization: Organization) -> str:
    template = site.addressing.smtp
    return template if "@" in template else f"{template}@{organization.domains[0]}"


def site_x400(site: Site, organization: Organization) -> dict[str, str]:
    """The site's X.400 originator attributes, which every recipient's address starts with."""
    x400 = site.addressing.x400
    return {
        "c": x400.country.upper(),
        "a": x400.admd,
        "p": x400.prmd or sanitize_x400(organization.name, X400_LIMITS["p"]),
        "o": x400.organization or sanitize_x400(site.name, X400_LIMITS["o"]),
    }


def site_msmail(site: Site, organization: Organization) -> str:
    """The site's MS Mail NETWORK/POSTOFFICE."""
    msmail = site.addressing.msmail
    network = msmail.network or sanitize_ms(organization.name)
    postoffice = msmail.postoffice or sanitize_ms(site.name)
    return f"{network.upper()}/{postoffice.upper()}"


class SiteAddresser:
    """One site's addressing, worked out once and applied to each of its recipients."""

    def __init__(self, site: Site, organization: Organization) -> None:
        self.site_name = site.name
        self.template = smtp_template(site, organization)
        self.local_template, _, domain = self.template.rpartition("@")
        self.domain = domain.lower()
        self.x400 = site_x400(site, organization)
        self.x400_prefix = format_x400({k: v for k, v in self.x400.items() if v})
        self.msmail = site_msmail(site, organization)

    def smtp(self, mailbox: Mailbox) -> str:
        local = sanitize_local_part(expand_template(self.local_template, mailbox))
        if not local:
            raise AddressingError(
                f"site '{self.site_name}' SMTP template '{self.template}' gives mailbox "
                f"'{mailbox.alias}' an empty local part"
            )
        return f"{local}@{self.domain}"

    def x400_address(self, mailbox: Mailbox) -> str:
        surname = sanitize_x400(mailbox.surname, X400_LIMITS["s"]) or sanitize_x400(
            mailbox.alias, X400_LIMITS["s"]
        )
        if not surname:
            # An X.400 address without s= (or cn=) is no address at all.
            raise AddressingError(
                f"mailbox '{mailbox.alias}' has neither a surname nor an alias that can be "
                "an X.400 surname (letters, digits, spaces and '()+,-./:?)"
            )
        # s, g and i follow the site's c, a, p and o in X400_KEYS order.
        given = sanitize_x400(mailbox.given_name, X400_LIMITS["g"])
        initials = sanitize_x400(mailbox.initials, X400_LIMITS["i"])
        return (
            f"{self.x400_prefix}s={surname};"
            + (f"g={given};" if given else "")
            + (f"i={initials};" if initials else "")
        )

    def ms(self, mailbox: Mailbox) -> str:
        name = sanitize_ms(mailbox.alias)
        if not name:
            raise AddressingError(
                f"alias '{mailbox.alias}' gives no MS Mail mailbox name "
                "(it needs a letter, digit, '-' or '_')"
            )
        return f"{self.msmail}/{name}"

    def _generated(self, mailbox: Mailbox) -> tuple[ProxyAddress, ...]:
        smtp, x400 = self.smtp(mailbox), self.x400_address(mailbox)  # their errors first
        return (
            ProxyAddress(AddressType.MS, self.ms(mailbox), primary=True),
            ProxyAddress(AddressType.SMTP, smtp, primary=True),
            ProxyAddress(AddressType.X400, x400, primary=True),
        )

    def addresses(self, mailbox: Mailbox) -> tuple[ProxyAddress, ...]:
        """Every address of the recipient, primaries first in type order, then secondaries.

        As in Exchange, an explicit primary (upper-case type) replaces the generated one,
        which then stays on as a secondary address; so do the addresses a previous alias
        generated, so that mail to them (queued mail too) follows a renamed mailbox. Raises
        AddressingError.
        """
        generated = self._generated(mailbox)
        if not mailbox.proxy_addresses and not mailbox.previous_aliases:
            return generated  # already in order: the tuples sort by type, MS < SMTP < X400
        explicit_primary = {p.type for p in mailbox.proxy_addresses if p.primary}
        everything = [
            *(p._replace(primary=p.type not in explicit_primary) for p in generated),
            *mailbox.proxy_addresses,
            *(
                p._replace(primary=False)
                for previous in mailbox.previous_aliases
                for p in self._generated(mailbox.model_copy(update={"alias": previous}))
            ),
        ]
        primaries = sorted(p for p in everything if p.primary)
        seen = {p.key for p in primaries}
        secondaries = []
        for proxy in everything:
            if not proxy.primary and proxy.key not in seen:
                seen.add(proxy.key)
                secondaries.append(proxy)
        return (*primaries, *secondaries)


def generated_smtp(mailbox: Mailbox, site: Site, organization: Organization) -> str:
    return SiteAddresser(site, organization).smtp(mailbox)


def generated_x400(mailbox: Mailbox, site: Site, organization: Organization) -> str:
    return SiteAddresser(site, organization).x400_address(mailbox)


def generated_ms(mailbox: Mailbox, site: Site, organization: Organization) -> str:
    return SiteAddresser(site, organization).ms(mailbox)


def proxy_addresses(
    mailbox: Mailbox, site: Site, organization: Organization
) -> tuple[ProxyAddress, ...]:
    return SiteAddresser(site, organization).addresses(mailbox)
