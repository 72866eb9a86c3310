"""The one grammar of every name that reaches a `zfs`/`zpool` argv: pools, datasets, snapshots, bookmarks,
hold tags and property names.

ZFS's own rules (OpenZFS `zfs_namecheck.c`, libzfs `zpool_name_valid`/`zfs_validate_name`): a component is
made of `A-Z a-z 0-9 _ - . :` and space, is neither empty nor `.`/`..`; a dataset name is components joined by
`/`, shorter than 256 characters, its first component the pool; a pool name begins with a letter, is not
`mirror`/`raidz`/`draid` nor disk-like (`c0...`), and a *new* pool name (import under a new name) does not
begin with `mirror`, `raidz`, `draid`, `spare` and is not `log`. `%` (ZFS's internal temporary names) is
never accepted from outside.

Ours on top: nothing we put in an argv may begin with `-`, so a name can never be read as an option (full
dataset and snapshot names begin with the pool's letter; hold tags and property names are checked for it). The `*_error`
functions say why a name is unusable (None when it is fine); `check_*` raise `InvalidName` (EINVAL) and are
what the argv builders call.
"""
from __future__ import annotations

import errno
import re

from middlewared_plugin.errors import CallError

#: ZFS_MAX_DATASET_NAME_LEN is 256 including the terminating NUL.
MAX_NAME_LENGTH = 255
#: One component of a dataset or snapshot name (ZFS's `valid_char`).
COMPONENT_CHARACTERS = "A-Za-z0-9_.: -"
_NOT_COMPONENT = re.compile(f"[^{COMPONENT_CHARACTERS}]")
_RESERVED_POOLS = ("mirror", "raidz", "draid")
_RESERVED_NEW_POOL_PREFIXES = ("mirror", "raidz", "draid", "spare")
_PROPERTY = re.compile(r"[a-z0-9_.:@][a-z0-9_.:@-]*")
_GUID = re.compile(r"[0-9]+")


class InvalidName(CallError):
    """A name the grammar refuses; raised before any command runs."""

    def __init__(self, message: str):
        super().__init__(message, errno.EINVAL)


def characters_message(characters: list[str]) -> str:
    """`Character "$" is not allowed` / `Characters "$", "(" are not allowed`: unique, in order, quoted."""
    unique = list(dict.fromkeys(characters))
    quoted = ", ".join(f'"{c}"' for c in unique)
    return f"Character {quoted} is not allowed" if len(unique) == 1 else f"Characters {quoted} are not allowed"


def disallowed_characters(text: str, also_allowed: str = "") -> list[str]:
    """The characters of `text` that no name component may hold (besides `also_allowed`), in order."""
    return [c for c in _NOT_COMPONENT.findall(text) if c not in also_allowed]


def component_error(component: str, what: str = "name") -> str | None:
    if not component:
        return f"The {what} has an empty component"
    if component in (".", ".."):
        return f"The {what} has a {component!r} component"
    if bad := disallowed_characters(component):
        return f"{characters_message(bad)} in a {what}"
    return None


def pool_name_error(name: str, *, new: bool = False) -> str | None:
    """Why `name` cannot be a pool name; `new` adds the reserved prefixes refused for pools being named now."""
    if not name:
        return "Pool name is empty"
    if len(name) > MAX_NAME_LENGTH - 16:  # room for "/$ORIGIN@$ORIGIN", as zpool checks
        return "Pool name is too long"
    if bad := disallowed_characters(name):
        return f"{characters_message(bad)} in a pool name"
    if not name[0].isascii() or not name[0].isalpha():
        return "Pool name must begin with a letter"
    if name in _RESERVED_POOLS or (new and (name.startswith(_RESERVED_NEW_POOL_PREFIXES) or name == "log")):
        return f"Pool name {name!r} is reserved"
    if name[0] == "c" and name[1:2].isdigit():
        return f"Pool name {name!r} is reserved (it looks like a disk)"
    return None


def dataset_name_error(name: str) -> str | None:
    """Why `name` cannot be a dataset (file system or volume) name."""
    if not name:
        return "Dataset name is empty"
    if name.startswith("-"):
        return "A dataset name cannot begin with '-'"
    if len(name) > MAX_NAME_LENGTH:
        return f"Dataset name is longer than {MAX_NAME_LENGTH} characters"
    for delimiter, kind in (("@", "snapshot"), ("#", "bookmark")):
        if delimiter in name:
            return f"A dataset name cannot contain {delimiter!r} (that names a {kind})"
    pool, *components = name.split("/")
    if error := pool_name_error(pool):
        return error
    for component in components:
        if error := component_error(component, "dataset name"):
            return error
    return None


def _child_error(full: str, delimiter: str, kind: str) -> str | None:
    dataset, sep, child = full.partition(delimiter)
    if not sep:
        return f"A {kind} name needs {delimiter!r}"
    if len(full) > MAX_NAME_LENGTH:
        return f"{kind.capitalize()} name is longer than {MAX_NAME_LENGTH} characters"
    return dataset_name_error(dataset) or snapshot_part_error(child, kind)


def snapshot_part_error(name: str, kind: str = "snapshot") -> str | None:
    """Why `name` cannot be the part after "@" (or "#")."""
    # A leading '-' is harmless here: this part only ever reaches an argv after "dataset@".
    if not name:
        return f"The {kind} name after the delimiter is empty"
    if bad := disallowed_characters(name):
        return f"{characters_message(bad)} in a {kind} name"
    return None


def snapshot_name_error(full: str) -> str | None:
    """Why `full` cannot be a full snapshot name (`dataset@name`)."""
    return _child_error(full, "@", "snapshot")


def bookmark_name_error(full: str) -> str | None:
    return _child_error(full, "#", "bookmark")


def hold_tag_error(tag: str) -> str | None:
    if not tag:
        return "Hold tag is empty"
    if len(tag) > MAX_NAME_LENGTH:
        return "Hold tag is too long"
    if tag.startswith("-"):
        return "A hold tag cannot begin with '-'"
    if bad := disallowed_characters(tag):
        return f"{characters_message(bad)} in a hold tag"
    return None


def property_name_error(name: str) -> str | None:
    """Native (`readonly`) and user (`org.example:tag`) property names: lower case, never beginning with '-'."""
    if not name:
        return "Property name is empty"
    if len(name) > MAX_NAME_LENGTH or not _PROPERTY.fullmatch(name):
        return f"{name!r} is not a valid property name"
    return None


def guid_error(guid: str) -> str | None:
    return None if _GUID.fullmatch(guid) else f"{guid!r} is not a pool guid (decimal digits)"


# -- what the argv builders call ------------------------------------------------------------------------------

def _checked(error: str | None, name: str) -> str:
    if error is not None:
        raise InvalidName(f"Invalid name {name!r}: {error}")
    return name


def check_pool(name: str, *, new: bool = False) -> str:
    return _checked(pool_name_error(name, new=new), name)


def check_dataset(name: str) -> str:
    return _checked(dataset_name_error(name), name)


def check_snapshot(full: str) -> str:
    return _checked(snapshot_name_error(full), full)


def check_dataset_or_snapshot(name: str) -> str:
    return check_snapshot(name) if "@" in name else check_dataset(name)


def check_snapshot_or_bookmark(name: str) -> str:
    return _checked(bookmark_name_error(name), name) if "#" in name else check_snapshot(name)


def check_snapshot_part(name: str) -> str:
    return _checked(snapshot_part_error(name), name)


def check_hold_tag(tag: str) -> str:
    return _checked(hold_tag_error(tag), tag)


def check_property(name: str) -> str:
    return _checked(property_name_error(name), name)


def check_guid(guid: str) -> str:
    return _checked(guid_error(guid), guid)
