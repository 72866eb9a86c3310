"""Key generation, derivation and validation (API §2.4), with OpenSSH's ssh-keygen as the independent judge."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from middlewared_plugin.remote.ssh import remote_command
from middlewared_plugin.remote.ssh_keys import (
    KeyProblem,
    SshKeyError,
    generate_key_pair,
    is_valid_public_key,
    normalize_private_key,
    parse_host_keys,
    public_key_from_private,
    validate_key_pair,
)


def keygen(tmp_path: Path, *args: str, name: str = "key") -> tuple[str, str]:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-C", "a comment", "-f", str(path), *args], check=True)
    return path.read_text(), path.with_suffix(".pub").read_text()


def keygen_public_of(tmp_path: Path, private_key: str) -> str:
    """What `ssh-keygen -y` derives from a private key (the reference's own method)."""
    path = tmp_path / "check"
    path.write_text(private_key)
    path.chmod(0o600)
    out = subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", str(path)], check=True, capture_output=True, text=True)
    return " ".join(out.stdout.split()[:2])


def keygen_fingerprint(tmp_path: Path, public_key: str) -> str:
    path = tmp_path / "fingerprint"
    path.write_text(public_key)
    return subprocess.run(["ssh-keygen", "-l", "-f", str(path)], check=True, capture_output=True, text=True).stdout


async def test_generated_pair_is_unencrypted_rsa_in_openssh_format(tmp_path: Path) -> None:
    pair = await generate_key_pair()
    assert pair["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert pair["public_key"].startswith("ssh-rsa ")
    assert len(pair["public_key"].split()) == 2  # no comment
    # ssh-keygen reads it without a passphrase and derives the same public key.
    assert keygen_public_of(tmp_path, pair["private_key"]) == pair["public_key"]
    assert keygen_fingerprint(tmp_path, pair["public_key"]).startswith("3072 ")


async def test_generated_pairs_differ_and_ed25519_is_available(tmp_path: Path) -> None:
    a, b = await generate_key_pair("ed25519"), await generate_key_pair("ed25519")
    assert a["public_key"].startswith("ssh-ed25519 ")
    assert a["private_key"] != b["private_key"]
    assert keygen_public_of(tmp_path, a["private_key"]) == a["public_key"]


@pytest.mark.parametrize("key_type", ["rsa", "ecdsa", "ed25519"])
def test_public_key_derivation_matches_ssh_keygen(tmp_path: Path, key_type: str) -> None:
    private, public = keygen(tmp_path, "-t", key_type, "-N", "")
    derived = public_key_from_private(private)
    assert derived == " ".join(public.split()[:2])
    assert derived == keygen_public_of(tmp_path, private)


def test_pem_private_keys_are_accepted(tmp_path: Path) -> None:
    private, public = keygen(tmp_path, "-t", "rsa", "-m", "PEM", "-N", "")
    assert private.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert public_key_from_private(private) == " ".join(public.split()[:2])


@pytest.mark.parametrize("fmt", [[], ["-m", "PEM"]], ids=["openssh", "pem"])
def test_passphrase_protected_private_key_is_refused_with_truenas_message(tmp_path: Path, fmt: list[str]) -> None:
    private, public = keygen(tmp_path, "-t", "rsa", "-N", "secret", *fmt)
    with pytest.raises(SshKeyError) as e:
        public_key_from_private(private)
    assert e.value.problem is KeyProblem.ENCRYPTED_PRIVATE_KEY
    check = validate_key_pair(private, public)
    assert [(i.attribute, i.message) for i in check.issues] == [
        ("private_key", "Encrypted private keys are not allowed"),
    ]


@pytest.mark.parametrize("text", [
    "garbage",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",  # a public key
])
def test_broken_private_key_is_reported_on_private_key(text: str) -> None:
    check = validate_key_pair(text, None)
    assert not check.ok
    (issue,) = check.issues
    assert issue.attribute == "private_key"
    assert issue.problem is KeyProblem.BROKEN_PRIVATE_KEY
    assert issue.message and issue.message != KeyProblem.ENCRYPTED_PRIVATE_KEY.value


def test_mismatched_pair_is_reported_on_public_key(tmp_path: Path) -> None:
    private, _ = keygen(tmp_path, "-t", "ed25519", "-N", "", name="a")
    _, other_public = keygen(tmp_path, "-t", "ed25519", "-N", "", name="b")
    check = validate_key_pair(private, other_public)
    assert [(i.attribute, i.problem, i.message) for i in check.issues] == [
        ("public_key", KeyProblem.MISMATCH, "Private key and public key do not match"),
    ]


def test_matching_pair_passes_even_with_different_comment(tmp_path: Path) -> None:
    private, public = keygen(tmp_path, "-t", "ed25519", "-N", "")
    given = " ".join(public.split()[:2]) + " someone@elsewhere\n"
    check = validate_key_pair(private, given)
    assert check.ok
    assert check.public_key == given  # a given public key is kept as given


def test_missing_public_key_is_derived_without_comment(tmp_path: Path) -> None:
    private, public = keygen(tmp_path, "-t", "rsa", "-N", "")
    check = validate_key_pair(private, None)
    assert check.ok
    assert check.public_key == " ".join(public.split()[:2])


def test_no_key_at_all() -> None:
    check = validate_key_pair(None, None)
    assert [(i.attribute, i.message) for i in check.issues] == [("public_key", "You must specify a key")]
    assert [i.message for i in validate_key_pair("", "").issues] == ["You must specify a key"]


def test_public_key_only(tmp_path: Path) -> None:
    _, public = keygen(tmp_path, "-t", "ecdsa", "-N", "")
    assert validate_key_pair(None, public).ok
    check = validate_key_pair(None, "ssh-rsa notbase64")
    assert [(i.attribute, i.problem, i.message) for i in check.issues] == [
        ("public_key", KeyProblem.INVALID_PUBLIC_KEY, "Invalid public key"),
    ]


def test_public_key_validity_agrees_with_ssh_keygen(tmp_path: Path) -> None:
    _, public = keygen(tmp_path, "-t", "ed25519", "-N", "")
    path = tmp_path / "pub"
    cases = [
        (public, True), ("ssh-ed25519 AAAA", False), ("hello world", False), ("", False),
        # Like ssh-keygen, a readable key line is enough; broken lines and a host column are skipped.
        ("ssh-rsa broken\n" + public, True), ("backup.example " + public, True),
    ]
    for text, expected in cases:
        path.write_text(text)
        accepted = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True).returncode == 0
        assert accepted is expected, text
        assert is_valid_public_key(text) is expected, text


def test_private_key_is_stored_stripped_with_one_newline() -> None:
    assert normalize_private_key("\n  -----BEGIN X-----\nabc\n-----END X-----\n\n\n") == \
        "-----BEGIN X-----\nabc\n-----END X-----\n"


def test_stored_host_keys_parse_with_or_without_host_column(tmp_path: Path) -> None:
    _, rsa = keygen(tmp_path, "-t", "rsa", "-N", "", name="r")
    _, ed = keygen(tmp_path, "-t", "ed25519", "-N", "", name="e")
    rsa_line, ed_line = (" ".join(p.split()[:2]) for p in (rsa, ed))
    stored = f"# a comment\n\ntruenas.local {rsa_line}\n{ed_line} trailing comment\nnot a key\n"
    keys = parse_host_keys(stored)
    assert [k.export_public_key("openssh").decode().split()[:2] for k in keys] == [
        rsa_line.split(), ed_line.split(),
    ]
    assert parse_host_keys("nothing useful here") == []


def test_remote_command_quotes_each_argument_and_sudo_only_for_zfs() -> None:
    prefix = "echo middlewared-pid:$$ >&2; export LC_ALL=C; exec "
    assert remote_command(["echo", "a b", "; rm -rf x"]) == prefix + "echo 'a b' '; rm -rf x'"
    assert remote_command(["zfs", "list", "-H"], sudo=True) == prefix + "sudo -n zfs list -H"
    assert remote_command(["/usr/sbin/zpool", "list"], sudo=True) == prefix + "sudo -n /usr/sbin/zpool list"
    assert remote_command(["cat"], sudo=True) == prefix + "cat"
    assert remote_command(["zfs", "list"], sudo=False) == prefix + "zfs list"
