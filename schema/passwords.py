"""Password hashes: the spec holds hashes only, never a password.

Messages here never repeat the value they judge: it may be a password typed in by mistake.
"""

from __future__ import annotations

import re

import argon2

# bcrypt's modular crypt format: $2b$<cost>$<22 salt + 31 hash characters>.
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# The PHC string format: $argon2id$v=19$m=..,t=..,p=..$<salt>$<hash>, both unpadded base64 of at
# least 8 and 4 bytes (RFC 9106 §3.1).
_ARGON2 = re.compile(
    r"\$argon2(?:id|i|d)(?:\$v=\d+)?\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]{11,}\$[A-Za-z0-9+/]{6,}"
)
HOW_TO_HASH = "run `mailwright hash-password` and put its output here"


def check_password_hash(value: str) -> str:
    if value.startswith("$argon2"):
        # A regex, not argon2.extract_parameters: it checks the salt and hash parts too, and
        # costs a fraction of the time on 100,000 mailboxes.
        if not _ARGON2.fullmatch(value):
            raise ValueError(f"malformed argon2 hash; {HOW_TO_HASH}")
        if not value.startswith("$argon2id$"):
            raise ValueError(f"argon2 hashes must be argon2id; {HOW_TO_HASH}")
        return value
    if value.startswith("$2"):
        if not _BCRYPT.fullmatch(value):
            raise ValueError(f"malformed bcrypt hash; {HOW_TO_HASH}")
        return value
    raise ValueError(
        f"password must be an argon2id or bcrypt hash, not a plaintext password; {HOW_TO_HASH}"
    )


def hash_password(password: str) -> str:
    return argon2.PasswordHasher().hash(password)
