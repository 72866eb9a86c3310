"""`keychaincredential.*`: SSH key pairs and SSH connections (reference §2.4).

Other services that use credentials (replication) implement `credential_users(credential)`: `used_by`
and cascade delete ask every service, so the unbinding rule lives with the service that owns the data.
Remote commands for a credential go through `runner(id)`, the one way to reach an SSH host.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pwd
import secrets
import shutil
import socket
import ssl
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError
from websockets.exceptions import WebSocketException

from middlewared_plugin.client import Client
from middlewared_plugin.errors import (
    ESSLCERTVERIFICATIONERROR,
    CallError,
    InstanceNotFound,
    ValidationError,
    ValidationErrors,
)
from middlewared_plugin.remote.runner import Runner
from middlewared_plugin.remote.ssh import runner_for_credentials, scan_host_keys
from middlewared_plugin.remote.ssh_keys import (
    SshKeyError,
    authorized_key_line,
    generate_key_pair,
    normalize_private_key,
    validate_key_pair,
)
from middlewared_plugin.services.base import (
    ApiModel,
    CallContext,
    CRUDService,
    IdArgs,
    LongStr,
    NonEmptyStr,
    Private,
    api_method,
    pydantic_to_validation_errors,
)
from middlewared_plugin.services.common import SshHost, SshUsername

logger = logging.getLogger(__name__)

SSH_KEY_PAIR = "SSH_KEY_PAIR"
SSH_CREDENTIALS = "SSH_CREDENTIALS"
#: Login shells pairing replaces with bash (TrueNAS's NO_LOGIN_SHELL; /sbin is /usr/sbin on merged-/usr systems).
NO_LOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin")


def _one_public_key(value: str) -> str:
    try:
        return authorized_key_line(value)
    except SshKeyError as e:
        raise PydanticCustomError("public_key", str(e)) from None


#: A key pairing may add to an account's authorized_keys, as its `"<type> <base64>"` line (see authorized_key_line).
PairingPublicKey = Annotated[LongStr, AfterValidator(_one_public_key)]


class SshKeyPairAttributes(ApiModel):
    private_key: Annotated[LongStr | None, Private] = None
    public_key: LongStr | None = None


class SshCredentialsAttributes(ApiModel):
    host: SshHost
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    username: SshUsername = "root"
    private_key: int
    remote_host_key: Annotated[LongStr, Field(min_length=1)]
    connect_timeout: Annotated[int, Field(ge=1)] = 10


class KeychainCredentialSshKeyPairEntry(ApiModel):
    name: NonEmptyStr
    type: Literal["SSH_KEY_PAIR"]
    attributes: SshKeyPairAttributes


class KeychainCredentialSshCredentialsEntry(ApiModel):
    name: NonEmptyStr
    type: Literal["SSH_CREDENTIALS"]
    attributes: SshCredentialsAttributes


KeychainCredentialCreate = Annotated[
    KeychainCredentialSshKeyPairEntry | KeychainCredentialSshCredentialsEntry, Field(discriminator="type")
]


class KeychainCredentialCreateArgs(ApiModel):
    keychain_credential_create: KeychainCredentialCreate


class KeychainCredentialUpdate(ApiModel):
    name: NonEmptyStr | None = None
    #: Secret as a whole: a key pair's attributes hold its private key.
    attributes: Annotated[dict[str, Any] | None, Private] = None


class KeychainCredentialUpdateArgs(ApiModel):
    id: int
    keychain_credential_update: KeychainCredentialUpdate = KeychainCredentialUpdate()


class DeleteOptions(ApiModel):
    cascade: bool = False


class KeychainCredentialDeleteArgs(ApiModel):
    id: int
    options: DeleteOptions = DeleteOptions()


class GetOfTypeArgs(ApiModel):
    id: int
    type: str


class HostKeyScan(ApiModel):
    host: SshHost
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    connect_timeout: Annotated[int, Field(ge=1)] = 10


class HostKeyScanArgs(ApiModel):
    keychain_remote_ssh_host_key_scan: HostKeyScan


class SemiAutomaticSetup(ApiModel):
    name: NonEmptyStr
    url: NonEmptyStr
    verify_ssl: bool = True
    token: Annotated[str | None, Private] = None
    admin_username: str = "root"
    password: Annotated[str | None, Private] = None
    otp_token: Annotated[str | None, Private] = None
    username: SshUsername = "root"
    private_key: int
    connect_timeout: Annotated[int, Field(ge=1)] = 10
    sudo: bool = False


class SemiAutomaticSetupArgs(ApiModel):
    data: SemiAutomaticSetup


class SshPair(ApiModel):
    remote_hostname: str
    username: SshUsername = "root"
    public_key: PairingPublicKey


class SshPairArgs(ApiModel):
    data: SshPair


class GeneratedKey(ApiModel):
    generate_key: Literal[True] = True
    name: NonEmptyStr


class ExistingKey(ApiModel):
    generate_key: Literal[False]
    existing_key_id: int


class ManualSetup(ApiModel):
    host: SshHost
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    username: SshUsername = "root"
    remote_host_key: Annotated[LongStr, Field(min_length=1)]
    connect_timeout: Annotated[int, Field(ge=1)] = 10


class SemiAutomaticConnection(ApiModel):
    url: NonEmptyStr
    verify_ssl: bool = True
    token: Annotated[str | None, Private] = None
    admin_username: str = "root"
    password: Annotated[str | None, Private] = None
    otp_token: Annotated[str | None, Private] = None
    username: SshUsername = "root"
    connect_timeout: Annotated[int, Field(ge=1)] = 10
    sudo: bool = False


PrivateKeyChoice = Annotated[GeneratedKey | ExistingKey, Field(discriminator="generate_key")]


class ManualConnectionSetup(ApiModel):
    setup_type: Literal["MANUAL"]
    connection_name: NonEmptyStr
    private_key: PrivateKeyChoice
    manual_setup: ManualSetup


class SemiAutomaticConnectionSetup(ApiModel):
    setup_type: Literal["SEMI-AUTOMATIC"]
    connection_name: NonEmptyStr
    private_key: PrivateKeyChoice
    semi_automatic_setup: SemiAutomaticConnection


class SetupSshConnectionArgs(ApiModel):
    options: Annotated[ManualConnectionSetup | SemiAutomaticConnectionSetup, Field(discriminator="setup_type")]


@dataclass
class CredentialUse:
    """Something that uses a credential; `unbind` detaches it (cascade delete)."""

    title: str
    unbind_method: Literal["delete", "disable"]
    unbind: Callable[[], Awaitable[None]]


class KeychainCredentialService(CRUDService):
    namespace = "keychaincredential"
    role_prefix = "KEYCHAIN_CREDENTIAL"
    table = "keychaincredential"
    entry_name = "KeychainCredential"
    # create and update are overridden: they choose the model by `type` (the union below).
    entry_model = KeychainCredentialSshKeyPairEntry
    create_arg = "keychain_credential_create"
    update_arg = "keychain_credential_update"
    encrypted_fields = ("attributes",)
    secret_fields = ("attributes",)

    def _decode(self, id: int, doc: dict[str, Any]) -> dict[str, Any]:
        try:
            return super()._decode(id, doc)
        except CallError:
            # Undecryptable (the data dir's secret key changed): list the entry with empty attributes, as
            # TrueNAS does, so one bad row neither hides the others nor is ever used (get_of_type: EFAULT).
            return {"id": id, **doc, "attributes": {}}

    # Validation -------------------------------------------------------------------------------------------

    async def _validate(self, verrors: ValidationErrors, schema: str, data: dict[str, Any], id: int | None) -> None:
        if any(c["name"] == data["name"] and c["id"] != id for c in await self.stored()):
            verrors.add(f"{schema}.name", "Object with this name already exists")
        if data["type"] == SSH_KEY_PAIR:
            attrs = data["attributes"]
            check = validate_key_pair(attrs.get("private_key"), attrs.get("public_key"))
            for issue in check.issues:
                verrors.add(f"{schema}.attributes.{issue.attribute}", issue.message)
            if check.ok:
                if attrs.get("private_key"):
                    attrs["private_key"] = normalize_private_key(attrs["private_key"])
                attrs["public_key"] = check.public_key

    @api_method(KeychainCredentialCreateArgs, roles=("KEYCHAIN_CREDENTIAL_WRITE",))
    async def create(self, ctx: CallContext, data: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        verrors = ValidationErrors()
        await self._validate(verrors, "keychain_credential_create", data, None)
        verrors.check()
        return await self._insert(ctx, data)

    async def _insert(self, ctx: CallContext, data: dict[str, Any]) -> dict[str, Any]:
        id = await self.app.store.insert(self.table, self._encode(data))
        entry = await self.get_instance(CallContext(self.app, None), id)
        self.publish("ADDED", id, entry)
        return self.redact(ctx.credentials, entry)

    @api_method(KeychainCredentialUpdateArgs, roles=("KEYCHAIN_CREDENTIAL_WRITE",))
    async def update(self, ctx: CallContext, id: int, data: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        old = await self.get_instance(CallContext(self.app, None), id)
        given = {k: v for k, v in data.items() if v is not None}
        merged = {"name": old["name"], "type": old["type"], "attributes": old["attributes"], **given}
        model = (KeychainCredentialSshKeyPairEntry if old["type"] == SSH_KEY_PAIR
                 else KeychainCredentialSshCredentialsEntry)
        merged = self._validate_entry(model, "keychain_credential_update", merged)
        verrors = ValidationErrors()
        # TrueNAS's business validation says "keychain_credentials_update" (plural) here.
        await self._validate(verrors, "keychain_credentials_update", merged, id)
        verrors.check()
        retired = await self._connections_of(old) if merged["attributes"] != old["attributes"] else []
        await self.save(id, merged)
        # An idle pooled connection made with the old key would otherwise still be handed out (for up to
        # its idle time), so a revoked key would keep "working" and a new one would go untested.
        for attributes in retired:
            await runner_for_credentials(attributes).close()
        entry = await self.get_instance(CallContext(self.app, None), id)
        self.publish("CHANGED", id, entry)
        return self.redact(ctx.credentials, entry)

    async def _connections_of(self, credential: dict[str, Any]) -> list[dict[str, Any]]:
        """Resolved connection attributes of every SSH_CREDENTIALS entry that `credential` is or feeds."""
        ids = [credential["id"]] if credential["type"] == SSH_CREDENTIALS else [
            c["id"] for c in await self.stored()
            if c["type"] == SSH_CREDENTIALS and c["attributes"].get("private_key") == credential["id"]
        ]
        found = []
        for id in ids:
            try:
                found.append(await self.connection_attributes(id))
            except CallError:
                continue  # never usable (no key pair, no private key): no connection to close
        return found

    def _validate_entry(self, model: type[ApiModel], arg: str, data: dict[str, Any]) -> dict[str, Any]:
        try:
            return model.model_validate(data).model_dump()
        except PydanticValidationError as exc:
            raise pydantic_to_validation_errors(exc, arg) from None

    # Users and delete ------------------------------------------------------------------------------------

    async def _direct_uses(self, credential: dict[str, Any]) -> list[tuple[CredentialUse, dict[str, Any] | None]]:
        """Direct users, each with the SSH_CREDENTIALS entry it is (for key pairs) to recurse into."""
        uses: list[tuple[CredentialUse, dict[str, Any] | None]] = []
        if credential["type"] == SSH_KEY_PAIR:
            for other in await self.stored():
                if other["type"] == SSH_CREDENTIALS and other["attributes"].get("private_key") == credential["id"]:
                    uses.append((CredentialUse(
                        f"SSH credentials {other['name']}", "delete",
                        lambda other=other: self._delete(other["id"], cascade=True),
                    ), other))
        for service in self.app.services.values():
            finder = getattr(service, "credential_users", None)
            if finder is not None:
                uses.extend((use, None) for use in await finder(credential))
        return uses

    async def _all_uses(self, credential: dict[str, Any]) -> list[CredentialUse]:
        """Every user, recursively: a key pair lists its SSH credentials and what uses those."""
        result = []
        for use, nested in await self._direct_uses(credential):
            result.append(use)
            if nested is not None:
                result.extend(await self._all_uses(nested))
        return result

    @api_method(IdArgs, roles=("KEYCHAIN_CREDENTIAL_READ",))
    async def used_by(self, ctx: CallContext, id: int) -> list[dict[str, str]]:
        credential = await self._get_stored(id)
        return [{"title": u.title, "unbind_method": u.unbind_method} for u in await self._all_uses(credential)]

    @api_method(KeychainCredentialDeleteArgs, roles=("KEYCHAIN_CREDENTIAL_WRITE",))
    async def delete(  # type: ignore[override]
        self, ctx: CallContext, id: int, options: dict[str, Any] | None = None,
    ) -> None:
        await self._delete(id, cascade=bool((options or {}).get("cascade")))

    async def _delete(self, id: int, *, cascade: bool) -> None:
        credential = await self._get_stored(id)
        uses = await self._direct_uses(credential)
        if uses and not cascade:
            raise ValidationError("options.cascade", "This credential is used and no cascade option is specified")
        for use, _ in uses:
            await use.unbind()
        await self.app.store.delete(self.table, id)
        self.publish("REMOVED", id, None)

    async def _get_stored(self, id: int) -> dict[str, Any]:
        credential = await self.stored_one(id)
        if credential is None:
            raise InstanceNotFound(f"{self.entry_name} {id} does not exist")
        return credential

    @api_method(GetOfTypeArgs, private=True, secret_result=KeychainCredentialCreate)
    async def get_of_type(self, ctx: CallContext, id: int, type: str) -> dict[str, Any]:
        credential = await self.stored_one(id)
        if credential is None:
            raise CallError("Credential does not exist", errno.ENOENT)
        if credential["type"] != type:
            raise CallError(f"Credential is not of type {type}", errno.EINVAL)
        if not credential.get("attributes"):
            raise CallError(f"Decrypting credential {credential['name']} failed", errno.EFAULT)
        return credential

    # Remote access ---------------------------------------------------------------------------------------

    async def connection_attributes(self, id: int) -> dict[str, Any]:
        """SSH_CREDENTIALS attributes with `private_key` resolved to the key pair's private key text."""
        ctx = CallContext(self.app, None)
        credential = await self.get_of_type(ctx, id, SSH_CREDENTIALS)
        key_pair = await self.get_of_type(ctx, credential["attributes"]["private_key"], SSH_KEY_PAIR)
        if not key_pair["attributes"].get("private_key"):
            raise CallError(f"Key pair {key_pair['name']} has no private key", errno.EINVAL)
        return {**credential["attributes"], "private_key": key_pair["attributes"]["private_key"]}

    async def runner(self, id: int, *, sudo: bool = False) -> Runner:
        """The runner for an SSH_CREDENTIALS entry (connections are pooled per credential and key material)."""
        return runner_for_credentials(await self.connection_attributes(id), sudo=sudo)

    @api_method(roles=("KEYCHAIN_CREDENTIAL_WRITE",), secret_result=SshKeyPairAttributes)
    async def generate_ssh_key_pair(self, ctx: CallContext) -> dict[str, str]:
        return await generate_key_pair("rsa")

    @api_method(HostKeyScanArgs, roles=("KEYCHAIN_CREDENTIAL_WRITE",))
    async def remote_ssh_host_key_scan(self, ctx: CallContext, data: dict[str, Any]) -> str:
        try:
            return await scan_host_keys(data["host"], data["port"], data["connect_timeout"])
        except UnicodeError as e:
            # A malformed host name ("a..b", an over-long label) fails IDNA encoding before any lookup.
            raise CallError(f"ssh-keyscan failed: invalid host name {data['host']!r}: {e}", errno.EINVAL) from None

    @api_method(SemiAutomaticSetupArgs, roles=("KEYCHAIN_CREDENTIAL_WRITE",))
    async def remote_ssh_semiautomatic_setup(self, ctx: CallContext, data: dict[str, Any]) -> dict[str, Any]:
        key_pair = await self.stored_one(data["private_key"])
        if key_pair is None or key_pair["type"] != SSH_KEY_PAIR or not key_pair["attributes"].get("private_key"):
            raise CallError("Specified key pair not found", errno.ENOENT)
        if not data.get("token") and not data.get("password"):
            raise CallError(
                "You should specify either remote system password or temporary authentication token", errno.EINVAL,
            )
        pairing = await _pair_with_remote(data, key_pair["attributes"]["public_key"])
        return await self._insert(ctx, {
            "name": data["name"],
            "type": SSH_CREDENTIALS,
            "attributes": {
                "host": urlsplit(_remote_api_url(data["url"])).hostname or data["url"],
                "port": pairing["port"],
                "username": data["username"],
                "private_key": data["private_key"],
                "remote_host_key": pairing["host_key"],
                "connect_timeout": data["connect_timeout"],
            },
        })

    @api_method(SshPairArgs, private=True)
    async def ssh_pair(self, ctx: CallContext, data: dict[str, Any]) -> dict[str, Any]:
        """Authorize a remote system's public key for a local user; answer this host's SSH port and host keys.

        The other NAS's semi-automatic setup calls this, then (on TrueNAS) gives a nologin user a shell through
        `user.update`. This server has no user API, so here pairing makes that one change itself.
        """
        return await self.pair_here(ctx, data["username"], data["public_key"], unlock_login=True)

    async def pair_here(
        self, ctx: CallContext, username: str, public_key: str, *, unlock_login: bool,
    ) -> dict[str, Any]:
        """Add one public key to a local account's authorized_keys; this host's `{port, host_key}`.

        Only full admins get here (ssh_pair and replication.pair are private methods). `unlock_login` replaces a
        nologin shell with bash, as TrueNAS's semi-automatic setup does; nothing else about the account changes.
        """
        try:
            line = authorized_key_line(public_key)
        except SshKeyError as e:
            raise CallError(str(e), errno.EINVAL) from None
        user = await asyncio.to_thread(_pairing_user, username)
        if await asyncio.to_thread(_authorize_key, user, line):
            logger.info("Pairing: added a %s key to %s's authorized_keys (requested by %s)",
                        line.split()[0], user.pw_name, _requester(ctx))
        if unlock_login and user.pw_shell in NO_LOGIN_SHELLS:
            # A user that cannot log in cannot run zfs over SSH.
            shell = shutil.which("bash") or "/bin/sh"
            logger.warning("Pairing: changing the login shell of %s from %s to %s (requested by %s)",
                           user.pw_name, user.pw_shell, shell, _requester(ctx))
            await self.app.local_runner.run(["usermod", "-s", shell, user.pw_name])
        settings = self.app.settings
        hostname = socket.gethostname()
        keys = []
        for path in settings.ssh_host_key_files:
            text = await asyncio.to_thread(Path(path).read_text)
            keys.append(f"{hostname} {' '.join(text.split()[:2])}\n")
        return {"port": settings.ssh_port, "host_key": "".join(keys)}

    @api_method(SetupSshConnectionArgs, roles=("KEYCHAIN_CREDENTIAL_WRITE",))
    async def setup_ssh_connection(self, ctx: CallContext, options: dict[str, Any]) -> dict[str, Any]:
        stored = await self.stored()
        verrors = ValidationErrors()
        key = options["private_key"]
        if key["generate_key"]:
            if any(c["type"] == SSH_KEY_PAIR and c["name"] == key["name"] for c in stored):
                verrors.add("setup_ssh_connection.private_key.name", "Is already in use by another SSH Key pair")
        elif not any(c["type"] == SSH_KEY_PAIR and c["id"] == key["existing_key_id"] for c in stored):
            verrors.add("setup_ssh_connection.private_key.existing_key_id", "SSH Key Pair not found")
        if any(c["name"] == options["connection_name"] for c in stored):
            verrors.add("setup_ssh_connection.connection_name", "Is already in use by another Keychain Credential")
        verrors.check()

        generated_id: int | None = None
        if key["generate_key"]:
            pair = await generate_key_pair("rsa")
            created = await self._insert(ctx, {"name": key["name"], "type": SSH_KEY_PAIR, "attributes": pair})
            generated_id = key_id = created["id"]
        else:
            key_id = key["existing_key_id"]
        try:
            if options["setup_type"] == "MANUAL":
                return await self._insert(ctx, {
                    "name": options["connection_name"],
                    "type": SSH_CREDENTIALS,
                    "attributes": {**options["manual_setup"], "private_key": key_id},
                })
            return await self.remote_ssh_semiautomatic_setup(ctx, {
                **options["semi_automatic_setup"], "name": options["connection_name"], "private_key": key_id,
            })
        except BaseException:
            if generated_id is not None:
                await self._delete(generated_id, cascade=True)
            raise


def _remote_api_url(url: str) -> str:
    """The other server's websocket API for the URL a user typed: http(s) becomes ws(s), no scheme means ws."""
    base = url.strip().rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[len("http"):]
    elif not base.startswith("ws"):
        base = f"ws://{base}"
    return base + "/api/current"


async def _pair_with_remote(data: dict[str, Any], public_key: str) -> dict[str, Any]:
    """Log in to the other server's API and have it authorize our public key (its `ssh_pair`)."""
    client = Client(_remote_api_url(data["url"]), verify_ssl=data["verify_ssl"],
                    call_timeout=data["connect_timeout"] + 20)
    try:
        await asyncio.wait_for(client.connect(), data["connect_timeout"])
    except ssl.SSLCertVerificationError as exc:
        raise CallError(f"Unable to connect to remote system: {exc}", ESSLCERTVERIFICATIONERROR) from None
    # WebSocketException: something answered that is no websocket API (a web page, an SSH server...);
    # ValueError: a URL the client cannot use.
    except (OSError, TimeoutError, CallError, WebSocketException, ValueError) as exc:
        cause = exc.__cause__ if isinstance(exc, CallError) and exc.__cause__ else exc
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise CallError(f"Unable to connect to remote system: {cause}", ESSLCERTVERIFICATIONERROR) from None
        code = errno.ETIMEDOUT if isinstance(exc, TimeoutError) else errno.ECONNREFUSED
        raise CallError(f"Unable to connect to remote system: {str(exc) or type(exc).__name__}", code) from None
    try:
        if data.get("token"):
            if not await client.login_with_token(data["token"]):
                raise CallError("Invalid token", errno.EACCES)
        elif not await client.login_with_password(data["admin_username"], data["password"]):
            raise CallError("Invalid username or password", errno.EACCES)
        try:
            return await client.call("keychaincredential.ssh_pair", {
                "remote_hostname": "any-host", "username": data["username"], "public_key": public_key,
            })
        except CallError as exc:
            raise CallError(
                f"Semi-automatic SSH connection setup failed: {exc}\n\n"
                f"Please make sure that home directory for {data['username']} user on the remote system exists "
                "and is writeable.", errno.EFAULT,
            ) from None
    finally:
        await client.close()


def _requester(ctx: CallContext) -> str:
    return ctx.credentials.username if ctx.credentials is not None else "the server"


def _pairing_user(username: str) -> pwd.struct_passwd:
    """The local user `ssh_pair` authorizes a key for; it must exist and have a home directory."""
    try:
        user = pwd.getpwnam(username)
    except (KeyError, ValueError):  # ValueError: a name with a NUL byte
        raise CallError(f"User {username} does not exist", errno.ENOENT) from None
    if not Path(user.pw_dir).is_dir():
        raise CallError(f"Home directory {user.pw_dir} does not exist", errno.ENOENT)
    return user


def _authorize_key(user: pwd.struct_passwd, line: str) -> bool:
    """Add `line` to the user's ~/.ssh/authorized_keys unless its key is there already; True when added.

    This runs as root inside a directory the user controls, so no path is followed through a symbolic link
    (the user could point ~/.ssh or the file at another account's keys or at /etc/shadow): ~/.ssh and the
    file are opened relative to directory descriptors with O_NOFOLLOW. The new content goes to a temporary
    file renamed over the old one, so sshd never reads half a file; it keeps the old file's owner (the user
    for a new file), mode 0600 and every existing byte, with the new line appended.
    """
    home_fd = os.open(user.pw_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            os.mkdir(".ssh", 0o700, dir_fd=home_fd)
            created = True
        except FileExistsError:
            created = False
        ssh_fd = _open_in(home_fd, ".ssh", os.O_RDONLY | os.O_DIRECTORY, user)
        try:
            if created:
                os.fchown(ssh_fd, user.pw_uid, user.pw_gid)
            return _append_key(ssh_fd, user, line)
        finally:
            os.close(ssh_fd)
    finally:
        os.close(home_fd)


def _open_in(dir_fd: int, name: str, flags: int, user: pwd.struct_passwd) -> int:
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise CallError(f"{name} of user {user.pw_name} is not a plain file or directory (a symbolic link?); "
                            "refusing to write through it", errno.EPERM) from None
        raise


def _append_key(ssh_fd: int, user: pwd.struct_passwd, line: str) -> bool:
    name = "authorized_keys"
    try:
        # O_NONBLOCK: a FIFO planted under this name must not hang the call.
        fd = _open_in(ssh_fd, name, os.O_RDONLY | os.O_NONBLOCK, user)
    except FileNotFoundError:
        old, uid, gid = b"", user.pw_uid, user.pw_gid
    else:
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise CallError(f"{name} of user {user.pw_name} is not a regular file", errno.EPERM)
            old = f.read()
        uid, gid = info.st_uid, info.st_gid
    blob = line.split()[1].encode()
    if any(blob in existing.split() for existing in old.splitlines()):
        return False
    separator = b"\n" if old and not old.endswith(b"\n") else b""
    temporary = f".{name}.{secrets.token_hex(8)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=ssh_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(old + separator + line.encode() + b"\n")
            f.flush()
            os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), 0o600)
            os.fsync(f.fileno())
        os.replace(temporary, name, src_dir_fd=ssh_fd, dst_dir_fd=ssh_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=ssh_fd)
        raise
    os.fsync(ssh_fd)
    return True
