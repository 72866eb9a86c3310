"""SSH_KEY_PAIR and SSH_CREDENTIALS create/update: the validation table of reference §2.4 and its side effects."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.errors import ValidationErrors
from middlewared_plugin.remote.runner import LocalRunner
from tests.integration.keychain.conftest import create_key_pair, make_key

PRIVATE_A, PUBLIC_A = make_key("a")
PRIVATE_B, PUBLIC_B = make_key("b")
ENCRYPTED_PRIVATE, _ = make_key("enc", passphrase="secret")
BROKEN_PRIVATE = "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----\n"


def errors_of(raised: pytest.ExceptionInfo[ValidationErrors]) -> list[tuple[str, str]]:
    return [(e.attribute, e.errmsg) for e in raised.value.errors]


@pytest.mark.parametrize(("attributes", "attribute", "message"), [
    ({"private_key": ENCRYPTED_PRIVATE}, "private_key", "Encrypted private keys are not allowed"),
    ({"private_key": BROKEN_PRIVATE}, "private_key", None),
    ({}, "public_key", "You must specify a key"),
    ({"private_key": None, "public_key": None}, "public_key", "You must specify a key"),
    ({"private_key": PRIVATE_A, "public_key": PUBLIC_B}, "public_key", "Private key and public key do not match"),
    ({"public_key": "ssh-rsa bm90IGEga2V5"}, "public_key", "Invalid public key"),
    ({"public_key": "not a key at all"}, "public_key", "Invalid public key"),
], ids=["passphrase", "broken", "no-keys", "null-keys", "mismatch", "bad-blob", "garbage"])
async def test_create_rejects_bad_key_pairs(client: Client, attributes: dict[str, Any], attribute: str,
                                            message: str | None) -> None:
    with pytest.raises(ValidationErrors) as raised:
        await client.call("keychaincredential.create",
                          {"name": "bad", "type": "SSH_KEY_PAIR", "attributes": attributes})
    [(path, text)] = errors_of(raised)
    assert path == f"keychain_credential_create.attributes.{attribute}"
    if message is None:
        assert text  # the parser's own words, whatever they are
    else:
        assert text == message
    assert await client.call("keychaincredential.query") == []


async def test_update_reports_business_rules_under_the_plural_schema(client: Client) -> None:
    key = await create_key_pair(client, "a", private_key=PRIVATE_A)
    await create_key_pair(client, "b", public_key=PUBLIC_B)
    cases = [
        ({"attributes": {"private_key": ENCRYPTED_PRIVATE}}, "keychain_credentials_update.attributes.private_key",
         "Encrypted private keys are not allowed"),
        ({"attributes": {"private_key": PRIVATE_A, "public_key": PUBLIC_B}},
         "keychain_credentials_update.attributes.public_key", "Private key and public key do not match"),
        ({"attributes": {}}, "keychain_credentials_update.attributes.public_key", "You must specify a key"),
        ({"name": "b"}, "keychain_credentials_update.name", "Object with this name already exists"),
    ]
    for update, path, message in cases:
        with pytest.raises(ValidationErrors) as raised:
            await client.call("keychaincredential.update", key["id"], update)
        assert errors_of(raised) == [(path, message)], update
    # Argument-model errors keep the singular argument name.
    with pytest.raises(ValidationErrors) as raised:
        await client.call("keychaincredential.update", key["id"], {"attributes": {"private_key": 5}})
    assert [p for p, _ in errors_of(raised)] == ["keychain_credential_update.attributes.private_key"]
    assert await client.call("keychaincredential.get_instance", key["id"]) == key


async def test_attributes_are_replaced_wholesale_on_update(client: Client) -> None:
    key = await create_key_pair(client, "a", private_key=PRIVATE_A)
    updated = await client.call("keychaincredential.update", key["id"], {"attributes": {"public_key": PUBLIC_B}})
    assert updated["attributes"] == {"private_key": None, "public_key": PUBLIC_B}
    assert updated["type"] == "SSH_KEY_PAIR" and updated["name"] == "a"


async def test_only_private_key_derives_the_public_key(client: Client) -> None:
    key = await create_key_pair(client, "a", private_key=PRIVATE_A)
    public = key["attributes"]["public_key"]
    assert public.split()[:2] == PUBLIC_A.split()[:2]
    assert len(public.split()) == 2, "the derived public key has no comment"


async def test_public_key_comment_does_not_count_as_a_mismatch(client: Client) -> None:
    key = await create_key_pair(client, "a", private_key=PRIVATE_A, public_key=PUBLIC_A + " extra-comment")
    assert key["attributes"]["public_key"] == PUBLIC_A + " extra-comment"


async def test_public_key_alone_is_a_valid_key_pair(client: Client) -> None:
    key = await create_key_pair(client, "a", public_key=PUBLIC_A)
    assert key["attributes"] == {"private_key": None, "public_key": PUBLIC_A}


@pytest.mark.parametrize("pasted", [PRIVATE_A.strip() + "\n \n\n", PRIVATE_A.strip()], ids=["extra", "none"])
async def test_private_key_is_stored_stripped_with_one_trailing_newline(client: Client, pasted: str) -> None:
    key = await create_key_pair(client, "a", private_key=pasted)
    assert key["attributes"]["private_key"] == PRIVATE_A.strip() + "\n"
    fetched = await client.call("keychaincredential.get_instance", key["id"])
    assert fetched["attributes"]["private_key"] == PRIVATE_A.strip() + "\n"


async def test_names_are_unique_across_types(client: Client) -> None:
    key = await create_key_pair(client, "taken", public_key=PUBLIC_A)
    with pytest.raises(ValidationErrors) as raised:
        await create_key_pair(client, "taken", public_key=PUBLIC_B)
    assert errors_of(raised) == [("keychain_credential_create.name", "Object with this name already exists")]
    with pytest.raises(ValidationErrors) as raised:
        await client.call("keychaincredential.create", {
            "name": "taken", "type": "SSH_CREDENTIALS",
            "attributes": {"host": "h", "private_key": key["id"], "remote_host_key": "x"},
        })
    assert errors_of(raised) == [("keychain_credential_create.name", "Object with this name already exists")]
    # Renaming an entry to its own name is no conflict.
    assert (await client.call("keychaincredential.update", key["id"], {"name": "taken"}))["name"] == "taken"


async def test_ssh_credentials_defaults_and_no_key_pair_check(client: Client) -> None:
    # §2.4: SSH_CREDENTIALS has no backend validation; the key pair id is only checked when used.
    created = await client.call("keychaincredential.create", {
        "name": "conn", "type": "SSH_CREDENTIALS",
        "attributes": {"host": "nas.example", "private_key": 9999, "remote_host_key": "ssh-ed25519 AAAA"},
    })
    assert created["type"] == "SSH_CREDENTIALS"
    assert created["attributes"] == {"host": "nas.example", "port": 22, "username": "root", "private_key": 9999,
                                     "remote_host_key": "ssh-ed25519 AAAA", "connect_timeout": 10}


async def test_type_cannot_change_and_required_attributes_are_checked(client: Client) -> None:
    with pytest.raises(ValidationErrors) as raised:
        await client.call("keychaincredential.create", {
            "name": "conn", "type": "SSH_CREDENTIALS", "attributes": {"host": "nas.example"},
        })
    # (Where pydantic puts the union tag in the path is the protocol layer's business, not this suite's.)
    paths = [p for p, _ in errors_of(raised)]
    assert len(paths) == 2 and all(p.startswith("keychain_credential_create.") for p in paths)
    assert paths[0].endswith("attributes.private_key") and paths[1].endswith("attributes.remote_host_key")
    key = await create_key_pair(client, "a", public_key=PUBLIC_A)
    with pytest.raises(ValidationErrors) as raised:
        await client.call("keychaincredential.update", key["id"], {"type": "SSH_CREDENTIALS"})
    assert [p for p, _ in errors_of(raised)] == ["keychain_credential_update.type"]


async def test_generated_key_pair_is_unencrypted_openssh_rsa(client: Client, tmp_path: Path) -> None:
    pair = await client.call("keychaincredential.generate_ssh_key_pair")
    assert set(pair) == {"private_key", "public_key"}
    assert pair["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert pair["public_key"].startswith("ssh-rsa ")
    # The real ssh-keygen reads it without a passphrase and derives the same public key.
    path = tmp_path / "generated"
    path.write_text(pair["private_key"])
    path.chmod(0o600)
    derived = await LocalRunner().run(["ssh-keygen", "-y", "-P", "", "-f", str(path)])
    assert derived.text.split()[:2] == pair["public_key"].split()[:2]
    bits = await LocalRunner().run(["ssh-keygen", "-l", "-f", str(path)])
    assert int(bits.text.split()[0]) >= 2048
    assert (await create_key_pair(client, "generated", **pair))["attributes"]["public_key"] == pair["public_key"]
