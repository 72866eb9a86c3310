"""Secrets at rest: Fernet encryption with a 0600 key file in the data dir, and password hashing.

Encrypted values are stored as `"fernet:<token>"` so a reader can tell them from plain text.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from middlewared_plugin.errors import CallError
from middlewared_plugin.store.datadir import open_private

_PREFIX = "fernet:"


class SecretBox:
    def __init__(self, key_file: Path):
        self._fernet = Fernet(self._load_or_create(key_file))

    @staticmethod
    def _load_or_create(key_file: Path) -> bytes:
        if key_file.exists():
            return key_file.read_bytes().strip()
        key = Fernet.generate_key()
        fd = open_private(key_file, os.O_WRONLY | os.O_EXCL)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key

    def encrypt(self, plaintext: str) -> str:
        return _PREFIX + self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, stored: str) -> str:
        if not stored.startswith(_PREFIX):
            raise CallError("Stored secret is not encrypted with this server's key")
        try:
            return self._fernet.decrypt(stored[len(_PREFIX):].encode()).decode()
        except InvalidToken:
            raise CallError("Stored secret cannot be decrypted: the data dir's secret key changed") from None


# scrypt parameters: ~16 MiB of memory per hash, as recommended for interactive logins.
_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
    return hmac.compare_digest(candidate.hex(), digest)


def hash_token(secret: str) -> str:
    """API key secrets are long random strings: a plain SHA-256 is enough to keep them unusable at rest."""
    return hashlib.sha256(secret.encode()).hexdigest()
