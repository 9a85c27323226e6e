"""Who may log in: the mailboxes' credentials, checked for POP3 USER/PASS and AUTH, SMTP AUTH
and client submission alike, and the throttling of failed logins from one address."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import argon2
import bcrypt

from mailwright.runtime.contract import HostConfig

# RFC 1939 §3: an autologout timer must be of at least 10 minutes.
DEFAULT_IDLE_TIMEOUT = 600.0
# Verified against when the user is unknown, so both failures take the same time.
_DUMMY_HASH = argon2.PasswordHasher().hash("mailwright: no such user")


@dataclass(frozen=True)
class Account:
    alias: str
    address: str  # primary SMTP address: users may log in with it or with the alias
    password_hash: str
    enabled: bool
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT


def verify_password(password_hash: str, password: str) -> bool:
    """argon2id or bcrypt, as the spec allows; blocking, so run it off the event loop."""
    try:
        if password_hash.startswith("$2"):
            return bcrypt.checkpw(password.encode(), password_hash.encode())
        return argon2.PasswordHasher().verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError, ValueError):
        return False


@dataclass
class Accounts:
    """Policy: who may log in, and how failures from one address are slowed down."""

    accounts: dict[str, Account]
    # Failures from one address before the growing delay starts, its base and its cap (seconds).
    free_failures: int = 3
    delay_base: float = 1.0
    delay_cap: float = 30.0
    _failures: dict[str, int] = field(default_factory=dict)
    _by_name: dict[str, Account] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.replace(self.accounts)

    def replace(self, accounts: dict[str, Account]) -> None:
        """The accounts of a reloaded host config, for logins from now on: a session that
        logged in keeps its account, and the failures counted per address stay counted."""
        by_name = {}
        for account in accounts.values():
            by_name[account.alias.casefold()] = account
            by_name[account.address.casefold()] = account
        self.accounts, self._by_name = accounts, by_name

    def verify_now(self, user: str, password: str) -> Account | None:
        """The account, if the password is its own; blocking (for synchronous callers)."""
        account = self._by_name.get(user.casefold())
        stored = account.password_hash if account else _DUMMY_HASH
        return account if verify_password(stored, password) and account else None

    async def authenticate(self, peer: str, user: str, password: str) -> Account | None:
        account = self._by_name.get(user.casefold())
        stored = account.password_hash if account else _DUMMY_HASH
        loop = asyncio.get_running_loop()
        valid = await loop.run_in_executor(None, verify_password, stored, password)
        if account is not None and valid:
            self._failures.pop(peer, None)
            return account
        failures = self._failures[peer] = self._failures.get(peer, 0) + 1
        if failures > self.free_failures:
            # Only this session waits; other clients are served meanwhile.
            excess = failures - self.free_failures - 1
            await asyncio.sleep(min(self.delay_cap, self.delay_base * 2**excess))
        return None


def accounts_from_host(config: HostConfig) -> dict[str, Account]:
    """The POP3 accounts of a compiled host config (`hosts/<server>.json`)."""
    return {
        row.alias: Account(
            alias=row.alias,
            address=row.primary["SMTP"],
            password_hash=password_hash,
            enabled=row.pop3.enabled,
            idle_timeout=float(row.pop3.idle_timeout),
        )
        for row, password_hash in config.mailboxes
    }
