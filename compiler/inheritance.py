"""Protocol settings after inheritance: site -> server -> mailbox.

Exchange's rule: a server with POP3 disabled disables it for every mailbox it homes, whatever
the mailbox says; otherwise the most specific setting wins, field by field.
"""

from __future__ import annotations

from mailwright.schema.models import Pop3Overrides, Pop3Settings, Server, Site


def effective_pop3(site: Site, server: Server, overrides: Pop3Overrides) -> Pop3Settings:
    settings = site.protocols.pop3
    for layer in (server.protocols.pop3, overrides):
        settings = settings.model_copy(update=layer.model_dump(exclude_none=True))
    if server.protocols.pop3.enabled is False:
        settings = settings.model_copy(update={"enabled": False})
    return settings


def server_pop3(site: Site, server: Server) -> Pop3Settings:
    return effective_pop3(site, server, Pop3Overrides())
