"""`pool.dataset.create` / `pool.dataset.update`: TrueNAS's arguments, validation and property semantics.

The argument names, choices, defaults and messages are TrueNAS's (`PoolDatasetCreate`, `PoolDatasetUpdate`,
`pool.dataset.do_create`/`do_update`): upper-case choices map to lower-case ZFS values, `"INHERIT"` means
"not set" on create and `zfs inherit` on update, `comments`/`managedby`/`*quota_warning|critical` are the
user properties TrueNAS keeps them in. What this host's ZFS cannot do is refused by validation naming the
field (a property its `zfs` does not know, volumes on zfs-fuse, encryption where there is none); a value
ZFS itself refuses is reported on the field it came from.

Where we differ on purpose (docs/TRUENAS.md): `share_type` is GENERIC only (this server sets no ACLs and
manages no shares), `encryption_options.generate_key` is refused (this server keeps no dataset keys, so a
generated one would be lost), and `comments: "INHERIT"` inherits the comment instead of storing the word.
"""
from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from middlewared_plugin.errors import ValidationError, ValidationErrors
from middlewared_plugin.remote.runner import CommandFailed
from middlewared_plugin.services.base import ApiModel, NonEmptyStr, Private
from middlewared_plugin.zfs.commands import Zfs
from middlewared_plugin.zfs.features import Feature, Features
from middlewared_plugin.zfs.names import dataset_name_error, property_name_error

INHERIT = "INHERIT"
CREATE_SCHEMA = "pool_dataset_create"
UPDATE_SCHEMA = "pool_dataset_update"

OnOffInherit = Literal["ON", "OFF", "INHERIT"]
Percent = Annotated[int, Field(ge=0, le=100)] | Literal["INHERIT"]
#: TrueNAS refuses quotas under 1 GiB; 0 or null remove the quota.
Quota = Annotated[int, Field(ge=1024 ** 3)] | Literal[0] | None
Compression = Literal[
    "ON", "OFF", "LZ4", "GZIP", "GZIP-1", "GZIP-9", "ZSTD", "ZSTD-FAST", "ZLE", "LZJB",
    "ZSTD-1", "ZSTD-2", "ZSTD-3", "ZSTD-4", "ZSTD-5", "ZSTD-6", "ZSTD-7", "ZSTD-8", "ZSTD-9", "ZSTD-10",
    "ZSTD-11", "ZSTD-12", "ZSTD-13", "ZSTD-14", "ZSTD-15", "ZSTD-16", "ZSTD-17", "ZSTD-18", "ZSTD-19",
    "ZSTD-FAST-1", "ZSTD-FAST-2", "ZSTD-FAST-3", "ZSTD-FAST-4", "ZSTD-FAST-5", "ZSTD-FAST-6", "ZSTD-FAST-7",
    "ZSTD-FAST-8", "ZSTD-FAST-9", "ZSTD-FAST-10", "ZSTD-FAST-20", "ZSTD-FAST-30", "ZSTD-FAST-40",
    "ZSTD-FAST-50", "ZSTD-FAST-60", "ZSTD-FAST-70", "ZSTD-FAST-80", "ZSTD-FAST-90", "ZSTD-FAST-100",
    "ZSTD-FAST-500", "ZSTD-FAST-1000", "INHERIT",
]
Checksum = Literal["ON", "OFF", "FLETCHER2", "FLETCHER4", "SHA256", "SHA512", "SKEIN", "EDONR", "BLAKE3", "INHERIT"]
VolBlockSize = Literal["512", "512B", "1K", "2K", "4K", "8K", "16K", "32K", "64K", "128K"]
_BLOCK_SIZES = {"512": 512, "512B": 512, **{f"{2 ** i}K": 2 ** i * 1024 for i in range(0, 8)}}
#: Record sizes TrueNAS offers: powers of two from 512 bytes to 16 MiB.
_RECORD_SIZE = re.compile(r"(\d+)([KM]?)B?")


class UserProperty(ApiModel):
    key: Annotated[str, Field(pattern=".*:.*")]
    value: str


class UserPropertyUpdate(ApiModel):
    key: Annotated[str, Field(pattern=".*:.*")]
    value: str | None = None
    remove: bool | None = None


class EncryptionOptions(ApiModel):
    generate_key: bool = False
    pbkdf2iters: Annotated[int, Field(ge=100000)] = 350000
    algorithm: Literal["AES-128-CCM", "AES-192-CCM", "AES-256-CCM", "AES-128-GCM", "AES-192-GCM",
                       "AES-256-GCM"] = "AES-256-GCM"
    passphrase: Annotated[Annotated[str, Field(min_length=8)] | None, Private] = None
    key: Annotated[Annotated[str, Field(min_length=64, max_length=64)] | None, Private] = None


class DatasetProperties(ApiModel):
    """What create and update share; None: not given (TrueNAS's NotRequired)."""

    comments: str | None = None
    sync: Literal["STANDARD", "ALWAYS", "DISABLED", "INHERIT"] | None = None
    snapdev: Literal["HIDDEN", "VISIBLE", "INHERIT"] | None = None
    compression: Compression | None = None
    exec: OnOffInherit | None = None
    managedby: NonEmptyStr | None = None
    quota_warning: Percent | None = None
    quota_critical: Percent | None = None
    refquota_warning: Percent | None = None
    refquota_critical: Percent | None = None
    reservation: Annotated[int, Field(ge=0)] | None = None
    refreservation: Annotated[int, Field(ge=0)] | None = None
    special_small_block_size: Annotated[int, Field(ge=0)] | Literal["INHERIT"] | None = None
    copies: Annotated[int, Field(ge=1, le=3)] | Literal["INHERIT"] | None = None
    snapdir: Literal["DISABLED", "VISIBLE", "HIDDEN", "INHERIT"] | None = None
    deduplication: Literal["ON", "VERIFY", "OFF", "INHERIT"] | None = None
    checksum: Checksum | None = None
    readonly: OnOffInherit | None = None
    # Filesystems only.
    aclmode: Literal["PASSTHROUGH", "RESTRICTED", "DISCARD", "INHERIT"] | None = None
    acltype: Literal["OFF", "NFSV4", "POSIX", "INHERIT"] | None = None
    atime: OnOffInherit | None = None
    quota: Quota = None
    refquota: Quota = None
    recordsize: NonEmptyStr | None = None
    # Volumes only.
    force_size: bool | None = None
    volsize: Annotated[int, Field(ge=1)] | None = None


class PoolDatasetCreate(DatasetProperties):
    name: NonEmptyStr
    type: Literal["FILESYSTEM", "VOLUME"] = "FILESYSTEM"
    casesensitivity: Literal["SENSITIVE", "INSENSITIVE", "INHERIT"] | None = None
    sparse: bool | None = None
    volblocksize: VolBlockSize | None = None
    share_type: Literal["GENERIC", "MULTIPROTOCOL", "NFS", "SMB", "APPS"] = "GENERIC"
    encryption_options: EncryptionOptions = EncryptionOptions()
    encryption: bool = False
    inherit_encryption: bool = True
    user_properties: list[UserProperty] = []
    create_ancestors: bool = False


class PoolDatasetUpdate(DatasetProperties):
    """Every field optional; what is given (even null, for `quota`) is what changes."""

    user_properties: list[UserProperty] | None = None
    user_properties_update: list[UserPropertyUpdate] | None = None


class DatasetCreateArgs(ApiModel):
    data: PoolDatasetCreate


class DatasetUpdateArgs(ApiModel):
    id: NonEmptyStr
    #: Validated in the method (`PoolDatasetUpdate`), where the fields actually given are still known.
    data: dict[str, Any] = {}


@dataclass(frozen=True)
class Prop:
    """One API field kept in one ZFS property."""

    field: str
    zfs: str
    to_zfs: Callable[[Any], str] = lambda value: str(value).lower()
    inheritable: bool = True

    @property
    def user(self) -> bool:
        return ":" in self.zfs


def _none_normalize(value: int | None) -> str:
    return "none" if value in (0, None) else str(value)


#: TrueNAS's `POOL_BASE_PROPERTIES` (create and update), without the ACL inheritance it derives itself.
PROPERTIES = (
    Prop("aclmode", "aclmode"), Prop("acltype", "acltype"), Prop("atime", "atime"),
    Prop("checksum", "checksum"), Prop("compression", "compression"), Prop("copies", "copies", str),
    Prop("deduplication", "dedup"), Prop("exec", "exec"), Prop("sync", "sync"),
    Prop("quota", "quota", _none_normalize, inheritable=False), Prop("readonly", "readonly"),
    Prop("recordsize", "recordsize", str), Prop("refquota", "refquota", _none_normalize, inheritable=False),
    Prop("refreservation", "refreservation", _none_normalize, inheritable=False),
    Prop("reservation", "reservation", _none_normalize, inheritable=False),
    Prop("snapdev", "snapdev"), Prop("snapdir", "snapdir"),
    Prop("special_small_block_size", "special_small_blocks", str),
    Prop("comments", "org.freenas:description", str), Prop("managedby", "org.truenas:managedby", str),
    Prop("quota_warning", "org.freenas:quota_warning", str),
    Prop("quota_critical", "org.freenas:quota_critical", str),
    Prop("refquota_warning", "org.freenas:refquota_warning", str),
    Prop("refquota_critical", "org.freenas:refquota_critical", str),
)
#: Only at creation (volsize then goes to `zfs create -V`).
CREATE_ONLY = (Prop("casesensitivity", "casesensitivity"), Prop("volblocksize", "volblocksize", str, False))
UPDATE_ONLY = (Prop("volsize", "volsize", str, inheritable=False),)
#: The user properties behind API fields: `user_properties` replacing the set leaves them alone.
MAPPED_USER_PROPERTIES = frozenset(p.zfs for p in PROPERTIES if p.user)

_FILESYSTEM_ONLY = ("aclmode", "acltype", "atime", "casesensitivity", "quota", "refquota", "recordsize")
_VOLUME_ONLY = ("force_size", "sparse", "volsize", "volblocksize")


def check_name(verrors: ValidationErrors, name: str) -> None:
    """TrueNAS's checks of a new dataset's name, with ZFS's grammar (`zfs/names.py`) saying why."""
    attribute = f"{CREATE_SCHEMA}.name"
    if "/" not in name:
        verrors.add(attribute, "You need a full name, e.g. pool/newdataset")
    elif (error := dataset_name_error(name)) is not None:
        verrors.add(attribute, f"Invalid dataset name: {error}")
    elif name.endswith(" "):
        verrors.add(attribute, "Trailing spaces are not permitted in dataset names")


def check_type_fields(verrors: ValidationErrors, schema: str, type_: str, given: Iterable[str]) -> None:
    """Fields that make sense for the other kind of dataset only (TrueNAS's messages)."""
    wrong = _VOLUME_ONLY if type_ == "FILESYSTEM" else _FILESYSTEM_ONLY
    for name in given:
        if name in wrong:
            verrors.add(f"{schema}.{name}", f"This field is not valid for {type_}")


def check_recordsize(verrors: ValidationErrors, schema: str, value: str | None) -> None:
    if value is None or value == INHERIT:
        return
    match = _RECORD_SIZE.fullmatch(value)
    size = int(match[1]) * {"": 1, "K": 1024, "M": 1024 ** 2}[match[2]] if match else 0
    if not (512 <= size <= 16 * 1024 ** 2 and size & (size - 1) == 0):
        verrors.add(f"{schema}.recordsize", f"{value!r} is an invalid recordsize.")


def check_volume(verrors: ValidationErrors, data: Mapping[str, Any], available: int) -> None:
    """A new volume's size: given, a multiple of its block size, at most 80% of the space (unless forced)."""
    size = data.get("volsize")
    if size is None:
        verrors.add(f"{CREATE_SCHEMA}.volsize", "This field is required for VOLUME")
        return
    if size > available * 0.80 and not data.get("force_size"):
        verrors.add(f"{CREATE_SCHEMA}.volsize",
                    "It is not recommended to use more than 80% of your available space for VOLUME")
    if data.get("volblocksize") and size % _BLOCK_SIZES[data["volblocksize"]]:
        verrors.add(f"{CREATE_SCHEMA}.volsize", "Volume size should be a multiple of volume block size")


def check_user_property_names(verrors: ValidationErrors, attribute: str, items: Iterable[Mapping[str, Any]]) -> None:
    for index, item in enumerate(items):
        if (error := property_name_error(item["key"])) is not None:
            verrors.add(f"{attribute}.{index}.key", error)


def properties_to_set(
    verrors: ValidationErrors, schema: str, data: Mapping[str, Any], given: Iterable[str], props: Iterable[Prop],
    features: Features,
) -> tuple[dict[str, str], list[str]]:
    """ZFS `property -> value` to set and properties to inherit for the `given` fields; a native property the
    host's ZFS does not know is an error on its field when set, and nothing to do when inherited."""
    wanted = set(given)
    values: dict[str, str] = {}
    inherit: list[str] = []
    for prop in props:
        if prop.field not in wanted:
            continue
        value = data[prop.field]
        known = prop.user or prop.zfs in features.properties
        if prop.inheritable and value == INHERIT:
            if known:
                inherit.append(prop.zfs)
        elif not known:
            verrors.add(f"{schema}.{prop.field}",
                        f"ZFS on host {features.host} does not support the {prop.zfs!r} property")
        else:
            values[prop.zfs] = prop.to_zfs(value)
    return values, inherit


def check_encryption(verrors: ValidationErrors, data: Mapping[str, Any], features: Features,
                     parent_encrypted: bool, parent: str) -> dict[str, str]:
    """TrueNAS's encryption rules for a new dataset; the ZFS properties (`zfs create -o`) they lead to."""
    schema = CREATE_SCHEMA
    if not data["encryption"]:
        if not features.has(Feature.ENCRYPTION):
            return {}
        if not data["inherit_encryption"]:
            if parent_encrypted:
                verrors.add(f"{schema}.encryption",
                            f"Cannot create an unencrypted dataset within an encrypted dataset ({parent}).")
            return {"encryption": "off"}
        return {}
    if not features.has(Feature.ENCRYPTION):
        verrors.add(f"{schema}.encryption", f"ZFS on host {features.host} does not support {Feature.ENCRYPTION.value}")
        return {}
    if data["inherit_encryption"]:
        verrors.add(f"{schema}.inherit_encryption", "Must be disabled when encryption is enabled.")
    options = data["encryption_options"]
    prefix = f"{schema}.encryption_options"
    if options["generate_key"]:
        verrors.add(f"{prefix}.generate_key",
                    "This server keeps no dataset keys, so a generated key would be lost: give a key or a passphrase")
    if options["passphrase"]:
        if options["key"]:
            verrors.add(f"{prefix}.key", "Must be disabled when dataset is to be encrypted with passphrase.")
    elif not options["key"]:
        verrors.add(f"{prefix}.key", "Please provide a key or select generate_key to automatically generate "
                                     "a key when passphrase is not provided.")
    elif not re.fullmatch(r"[0-9a-fA-F]{64}", options["key"]):
        verrors.add(f"{prefix}.key", "Please specify a valid key")
    passphrase = bool(options["passphrase"])
    return {"encryption": options["algorithm"].lower(), "keyformat": "passphrase" if passphrase else "hex",
            "keylocation": "prompt", **({"pbkdf2iters": str(options["pbkdf2iters"])} if passphrase else {})}


def check_user_properties_update(verrors: ValidationErrors, data: Mapping[str, Any]) -> None:
    """TrueNAS's rules for `user_properties_update` and `user_properties` in one update."""
    items = data.get("user_properties_update")
    if items and data.get("user_properties"):
        verrors.add(f"{UPDATE_SCHEMA}.user_properties_update",
                    'Should not be specified when "user_properties" are explicitly specified')
        return
    for index, item in enumerate(items or []):
        attribute = f"{UPDATE_SCHEMA}.user_properties_update.{index}"
        if item.get("value") is not None and item.get("remove"):
            verrors.add(f"{attribute}.remove", 'When "value" is specified, this cannot be set')
        elif item.get("value") is None and not item.get("remove"):
            verrors.add(f"{attribute}.value", 'Either "value" or "remove" must be specified')


def user_property_changes(data: Mapping[str, Any], current: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """User properties to set and to remove: `user_properties` replaces the set (the ones behind API fields
    excepted), `user_properties_update` sets or removes one by one."""
    values: dict[str, str] = {}
    remove: list[str] = []
    if data.get("user_properties") is not None:
        values = {item["key"]: item["value"] for item in data["user_properties"]}
        remove = [key for key in current if key not in values and key not in MAPPED_USER_PROPERTIES]
    for item in data.get("user_properties_update") or []:
        if item.get("value") is not None:
            values[item["key"]] = item["value"]
        elif item.get("remove"):
            remove.append(item["key"])
    return values, remove


def refusal(exc: CommandFailed, schema: str, sent: Mapping[str, str], props: Iterable[Prop]) -> ValidationErrors | None:
    """ZFS's refusal of one of the properties we sent ("'compression' must be one of ...", "invalid property
    'sync'"), as an error on the field it came from; None when it names none of them."""
    fields = {p.zfs: p.field for p in props}
    found = ValidationErrors()
    for prop in re.findall(r"'([a-z0-9_.:@-]+)'", exc.stderr):
        if prop in sent and prop in fields:
            found.add(f"{schema}.{fields[prop]}", exc.stderr.splitlines()[-1])
    return found or None


async def apply_update(zfs: Zfs, name: str, values: Mapping[str, str], inherit: Iterable[str],
                       props: Iterable[Prop]) -> None:
    """Set then inherit; a ZFS refusal is TrueNAS's "Failed to update properties" validation error (on the
    field it names where it names one)."""
    try:
        await zfs.set_properties(name, values)
        for prop in inherit:
            await zfs.inherit_property(name, prop)
    except CommandFailed as exc:
        if (errors := refusal(exc, UPDATE_SCHEMA, values, props)) is not None:
            raise errors from exc
        raise ValidationError("pool.dataset.update", f"Failed to update properties: {exc.stderr}",
                              errno.EINVAL) from exc


# TrueNAS's private attachment helpers ---------------------------------------------------------------------

class AttachmentDelegateArgs(ApiModel):
    name: NonEmptyStr
    path: str
    enabled: bool


class AttachmentsWithPathArgs(ApiModel):
    path: str
    check_parent: bool = False
    exact_match: bool = False
