"""Argument types shared by several namespaces."""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from middlewared_plugin.snapshots.naming import naming_schema_errors


def _valid_naming_schema(value: str) -> str:
    errors = naming_schema_errors(value)
    if errors:
        raise ValueError(errors[0])
    return value


#: A snapshot naming schema, checked as zettarepl does (errors read "Value error, <reason>").
SnapshotNameSchema = Annotated[str, AfterValidator(_valid_naming_schema)]
