"""The errors every layer raises, shaped as TrueNAS middleware sends them (API reference §1.5).

The protocol layer turns them into JSON-RPC error objects; services, the job manager and the engine only
raise them. Custom errnos are TrueNAS's own (201..210).
"""
from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator
from typing import Any

ENOMETHOD = 201
ESERVICESTARTFAILURE = 202
EREMOTENODEERROR = 204
EDATASETISLOCKED = 205
ENOTAUTHENTICATED = 207
ESSLCERTVERIFICATIONERROR = 208
EREBOOTREQUIRED = 209
EHAUNAVAILABLE = 210

_CUSTOM_ERRNAMES = {
    ENOMETHOD: "ENOMETHOD",
    ESERVICESTARTFAILURE: "ESERVICESTARTFAILURE",
    EREMOTENODEERROR: "EREMOTENODEERROR",
    EDATASETISLOCKED: "EDATASETISLOCKED",
    ENOTAUTHENTICATED: "ENOTAUTHENTICATED",
    ESSLCERTVERIFICATIONERROR: "ESSLCERTVERIFICATIONERROR",
    EREBOOTREQUIRED: "EREBOOTREQUIRED",
    EHAUNAVAILABLE: "EHAUNAVAILABLE",
}


def errname(code: int | None) -> str:
    if code is None:
        return "EUNKNOWN"
    return _CUSTOM_ERRNAMES.get(code) or errno.errorcode.get(code, "EUNKNOWN")


class CallError(Exception):
    """A method failed; `str()` carries the errname prefix as TrueNAS's does ("[EFAULT] ...")."""

    def __init__(self, errmsg: str, errno_: int = errno.EFAULT, extra: Any = None):
        super().__init__(errmsg)
        self.errmsg = errmsg
        self.errno = errno_
        self.extra = extra

    def __str__(self) -> str:
        return f"[{errname(self.errno)}] {self.errmsg}"


class ValidationError(CallError):
    """One invalid attribute. `attribute` is the TrueNAS path (`replication_create.source_datasets.0`)."""

    def __init__(self, attribute: str | None, errmsg: str, errno_: int = errno.EINVAL):
        super().__init__(errmsg, errno_)
        self.attribute = attribute

    def __str__(self) -> str:
        return f"[{errname(self.errno)}] {self.attribute or 'ALL'}: {self.errmsg}"

    def triples(self) -> list[list[Any]]:
        return [[self.attribute, self.errmsg, self.errno]]


class InstanceNotFound(ValidationError):
    def __init__(self, errmsg: str):
        super().__init__(None, errmsg, errno.ENOENT)


class MatchNotFound(CallError):
    def __init__(self) -> None:
        super().__init__("No entry matched the query", errno.EINVAL)

    def __str__(self) -> str:
        return self.errmsg


class ValidationErrors(CallError):
    """Every error of one call, collected: services add to it and raise it once at the end."""

    def __init__(self, errors: Iterable[tuple[str | None, str, int]] = ()):
        self.errors: list[ValidationError] = [ValidationError(a, m, e) for a, m, e in errors]
        super().__init__("", errno.EINVAL)

    def add(self, attribute: str | None, errmsg: str, errno_: int = errno.EINVAL) -> None:
        self.errors.append(ValidationError(attribute, errmsg, errno_))

    def extend(self, other: ValidationErrors) -> None:
        self.errors.extend(other.errors)

    def check(self) -> None:
        """Raise if anything was collected."""
        if self.errors:
            raise self

    def __bool__(self) -> bool:
        return bool(self.errors)

    def __iter__(self) -> Iterator[ValidationError]:
        return iter(self.errors)

    def __contains__(self, attribute: object) -> bool:
        return any(e.attribute == attribute for e in self.errors)

    def triples(self) -> list[list[Any]]:
        return [[e.attribute, e.errmsg, e.errno] for e in self.errors]

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)
