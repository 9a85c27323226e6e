"""The organization spec: pydantic models, a positioned YAML/CSV loader and semantic checks.

Of mailwright it imports only the runtime's standard-library routing vocabulary
(`mailwright.runtime.routing`: address types, route scopes, the X.400 text form), which host
processes share without loading pydantic; the compiler and the CLI build on this package.
"""

from mailwright.schema.diagnostics import Diagnostic, Position, Severity, SpecError
from mailwright.schema.loader import LoadedSpec, check_specs, load_spec, load_specs
from mailwright.schema.models import (
    AddressSpace,
    DirectoryImport,
    ImsConnector,
    Mailbox,
    OrganizationSpec,
    Pop3Settings,
    Server,
    Site,
    SiteAddressing,
    Zone,
)

__all__ = [
    "AddressSpace",
    "Diagnostic",
    "DirectoryImport",
    "ImsConnector",
    "LoadedSpec",
    "Mailbox",
    "OrganizationSpec",
    "Pop3Settings",
    "Position",
    "Server",
    "Severity",
    "Site",
    "SiteAddressing",
    "SpecError",
    "Zone",
    "check_specs",
    "load_spec",
    "load_specs",
]
