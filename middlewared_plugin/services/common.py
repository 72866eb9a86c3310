"""Argument types shared by several namespaces."""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator

from middlewared_plugin.remote.names import host_error, username_error
from middlewared_plugin.snapshots.naming import naming_schema_errors
from middlewared_plugin.zfs.names import dataset_name_error, pool_name_error


def _valid_naming_schema(value: str) -> str:
    errors = naming_schema_errors(value)
    if errors:
        raise ValueError(errors[0])
    return value


def _grammar(error_of: Callable[[str], str | None]) -> AfterValidator:
    """A field checked by one of the name grammars (errors read "Value error, <reason>")."""
    def check(value: str) -> str:
        if (error := error_of(value)) is not None:
            raise ValueError(error)
        return value

    return AfterValidator(check)


#: A snapshot naming schema, checked as zettarepl does (errors read "Value error, <reason>").
SnapshotNameSchema = Annotated[str, AfterValidator(_valid_naming_schema)]
#: A dataset name as ZFS accepts it (`zfs/names.py`), so never one that could be read as an option.
DatasetName = Annotated[str, _grammar(dataset_name_error)]
#: The name a pool is given now (on import): ZFS's pool rules including the reserved prefixes.
NewPoolName = Annotated[str, _grammar(lambda name: pool_name_error(name, new=True))]
#: Where an SSH connection goes: a host name or an IP literal (`remote/names.py`).
SshHost = Annotated[str, _grammar(host_error)]
#: An account name on an SSH peer.
SshUsername = Annotated[str, _grammar(username_error)]
