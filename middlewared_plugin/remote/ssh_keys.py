"""SSH key material: generating key pairs, deriving public keys, validating what users paste (API §2.4).

Everything here parses with asyncssh instead of running ssh-keygen on temp files. Validation results carry
the attribute (`private_key` / `public_key`) and TrueNAS's message, so the keychain service only prefixes
the attribute path.
"""
from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

import asyncssh

# TrueNAS runs `ssh-keygen -t rsa` whose default size is 3072 bits.
RSA_KEY_BITS = 3072


class KeyProblem(enum.Enum):
    """Why a key was refused; the value is the message TrueNAS shows (None: the parser's own words)."""

    ENCRYPTED_PRIVATE_KEY = "Encrypted private keys are not allowed"
    BROKEN_PRIVATE_KEY = None
    MISMATCH = "Private key and public key do not match"
    NO_KEY = "You must specify a key"
    INVALID_PUBLIC_KEY = "Invalid public key"


class SshKeyError(ValueError):
    """A key could not be used; `problem` says why, `str()` is the user-facing message."""

    def __init__(self, problem: KeyProblem, message: str | None = None):
        self.problem = problem
        super().__init__(message or problem.value)


@dataclass(frozen=True)
class KeyIssue:
    attribute: str  # "private_key" or "public_key", relative to the attributes object
    problem: KeyProblem
    message: str


@dataclass
class KeyPairCheck:
    """Outcome of validating a key pair: the public key to store (given or derived) and what is wrong."""

    public_key: str | None
    issues: list[KeyIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues


def _load_private(text: str) -> asyncssh.SSHKey:
    try:
        return asyncssh.import_private_key(text)
    except asyncssh.KeyImportError as e:
        # asyncssh says "Passphrase must be specified ..." for every encrypted format it recognises.
        if "passphrase" in str(e).lower():
            raise SshKeyError(KeyProblem.ENCRYPTED_PRIVATE_KEY) from None
        raise SshKeyError(KeyProblem.BROKEN_PRIVATE_KEY, str(e)) from None


def _public_line(key: asyncssh.SSHKey) -> str:
    """`"<type> <base64>"` without a comment."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def _generate(key_type: str) -> dict[str, str]:
    if key_type == "rsa":
        key = asyncssh.generate_private_key("ssh-rsa", key_size=RSA_KEY_BITS)
    elif key_type == "ed25519":
        key = asyncssh.generate_private_key("ssh-ed25519")
    else:
        raise ValueError(f"unsupported key type {key_type!r}")
    return {
        "private_key": key.export_private_key("openssh").decode(),
        "public_key": _public_line(key),
    }


async def generate_key_pair(key_type: str = "rsa") -> dict[str, str]:
    """A new unencrypted key pair in OpenSSH format: `{private_key, public_key}` (RSA by default, as TrueNAS).

    The public key is `"<type> <base64>"` without a comment. Runs in a thread: RSA generation takes a while.
    """
    return await asyncio.to_thread(_generate, key_type)


def public_key_from_private(private_key: str) -> str:
    """The public half (`"<type> <base64>"`, no comment) of an unencrypted private key; raises SshKeyError."""
    return _public_line(_load_private(private_key))


def normalize_private_key(private_key: str) -> str:
    """How TrueNAS stores a private key: surrounding whitespace stripped, one trailing newline."""
    return private_key.strip() + "\n"


def is_valid_public_key(public_key: str) -> bool:
    """What `ssh-keygen -l` accepts: some line holds a public key (optionally after a host name column)."""
    return bool(parse_host_keys(public_key))


def authorized_key_line(public_key: str) -> str:
    """The `authorized_keys` line for exactly one OpenSSH public key, `"<type> <base64>"`; raises SshKeyError.

    What pairing may add to an account's authorized keys: one line (a line break would add lines of the
    caller's choosing), no options prefix (`command=...`, `from=...`) and a key type asyncssh knows whose name
    matches the key blob. A trailing comment is accepted and dropped.
    """
    text = public_key.strip()
    if any(c in text for c in "\r\n\0"):
        raise SshKeyError(KeyProblem.INVALID_PUBLIC_KEY, "Invalid public key: it must be a single line")
    fields = text.split()
    if len(fields) < 2:
        raise SshKeyError(KeyProblem.INVALID_PUBLIC_KEY)
    try:
        key = asyncssh.import_public_key(" ".join(fields[:2]))
    except asyncssh.KeyImportError:
        raise SshKeyError(KeyProblem.INVALID_PUBLIC_KEY) from None
    if key.get_algorithm() != fields[0]:
        raise SshKeyError(KeyProblem.INVALID_PUBLIC_KEY)
    return _public_line(key)


def same_public_key(a: str, b: str) -> bool:
    """Compare two public keys by their first two fields (type and blob), ignoring comments."""
    return a.split()[:2] == b.split()[:2]


def validate_key_pair(private_key: str | None, public_key: str | None) -> KeyPairCheck:
    """Check a SSH_KEY_PAIR's attributes in TrueNAS's order and derive a missing public key.

    Stops at the first private-key problem (nothing else can be judged then), like the reference does.
    """
    derived: str | None = None
    if private_key:
        try:
            derived = public_key_from_private(private_key)
        except SshKeyError as e:
            return KeyPairCheck(public_key, [KeyIssue("private_key", e.problem, str(e))])
        if public_key and not same_public_key(public_key, derived):
            return KeyPairCheck(public_key, [KeyIssue("public_key", KeyProblem.MISMATCH, KeyProblem.MISMATCH.value)])
    public_key = public_key or derived
    if not public_key:
        return KeyPairCheck(None, [KeyIssue("public_key", KeyProblem.NO_KEY, KeyProblem.NO_KEY.value)])
    if not is_valid_public_key(public_key):
        problem = KeyProblem.INVALID_PUBLIC_KEY
        return KeyPairCheck(public_key, [KeyIssue("public_key", problem, problem.value)])
    return KeyPairCheck(public_key)


def parse_host_keys(remote_host_key: str) -> list[asyncssh.SSHKey]:
    """The keys in a stored `remote_host_key`: lines `"[hostname] <type> <base64> [comment]"`; others skipped."""
    keys = []
    for line in remote_host_key.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        # The key starts at field 0, or at field 1 when a host name column precedes it (ssh_pair's format).
        for start in (0, 1):
            try:
                keys.append(asyncssh.import_public_key(" ".join(fields[start:start + 2])))
                break
            except asyncssh.KeyImportError:
                continue
    return keys
