"""`mailwright hash-password` reads a password from stdin and prints its argon2id hash."""

from __future__ import annotations

import subprocess

import argon2
import pytest
from argon2.exceptions import VerifyMismatchError

from mailwright.schema.passwords import check_password_hash
from tests.helpers import MAILWRIGHT


def hash_password(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MAILWRIGHT), "hash-password"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("password", ["correct horse battery staple", "  spaced  ", "pässwörd€"])
def test_the_hash_is_argon2id_and_verifies(password: str) -> None:
    result = hash_password(password + "\n")
    assert (result.returncode, result.stderr) == (0, "")
    hashed = result.stdout.strip()
    assert result.stdout == hashed + "\n"
    assert hashed.startswith("$argon2id$")
    assert password not in result.stdout
    assert argon2.PasswordHasher().verify(hashed, password)
    with pytest.raises(VerifyMismatchError):
        argon2.PasswordHasher().verify(hashed, password + "x")
    # The spec accepts it as it is.
    assert check_password_hash(hashed) == hashed


def test_two_hashes_of_one_password_differ_by_salt() -> None:
    first, second = (hash_password("secret\n").stdout for _ in range(2))
    assert first != second


def test_an_empty_password_is_refused() -> None:
    result = hash_password("\n")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "empty password" in result.stderr
