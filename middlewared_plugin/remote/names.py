"""The grammar of what names an SSH peer: a host (a host name or an IP literal) and an account name.

Both end up on command lines (`ssh ... -l USER -- HOST`) and in connection parameters, so neither may ever
begin with `-` nor hold spaces or shell metacharacters. Host names follow RFC 1123 labels (letters, digits,
`-` inside a label; `_` tolerated as many LANs use it); IP literals are what `ipaddress` parses (IPv6 without
brackets, an optional `%zone`). Account names follow the portable POSIX/useradd rule: a letter or `_`, then
letters, digits, `_`, `.`, `-`, and an optional trailing `$` (machine accounts).
"""
from __future__ import annotations

import errno
import ipaddress
import re
import socket

from middlewared_plugin.errors import CallError
from middlewared_plugin.zfs.names import characters_message

MAX_HOST_LENGTH = 253
MAX_USERNAME_LENGTH = 64
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_HOST_CHARACTER = re.compile(r"[A-Za-z0-9_.-]")
_USERNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")
_USERNAME_CHARACTER = re.compile(r"[A-Za-z0-9_.$-]")


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_this_host(host: str) -> bool:
    """Whether `host` names this machine without asking DNS: loopback or unspecified IP literals (IPv4-mapped
    ones too), `localhost` and its subdomains, this machine's own host name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.rstrip(".").lower()
        return name in ("localhost", "localhost.localdomain", socket.gethostname().lower()) or \
            name.endswith(".localhost")
    mapped = getattr(address, "ipv4_mapped", None)
    return any(a.is_loopback or a.is_unspecified for a in (address, mapped) if a is not None)


def host_error(host: str) -> str | None:
    """Why `host` names no SSH peer (None when it is a host name or an IP literal)."""
    if not host:
        return "Host is empty"
    if host.startswith("-"):
        return "A host cannot begin with '-'"
    if is_ip_literal(host):
        return None
    if bad := [c for c in host if not _HOST_CHARACTER.fullmatch(c)]:
        return f"{characters_message(bad)} in a host name"
    name = host[:-1] if host.endswith(".") else host
    if len(name) > MAX_HOST_LENGTH:
        return f"A host name is at most {MAX_HOST_LENGTH} characters long"
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return "A host name is made of dot-separated labels of 1 to 63 letters, digits or '-', not beginning " \
               "or ending with '-'"
    return None


def username_error(username: str) -> str | None:
    """Why `username` is no valid account name."""
    if not username:
        return "User name is empty"
    if username.startswith("-"):
        return "A user name cannot begin with '-'"
    if bad := [c for c in username if not _USERNAME_CHARACTER.fullmatch(c)]:
        return f"{characters_message(bad)} in a user name"
    if len(username) > MAX_USERNAME_LENGTH:
        return f"A user name is at most {MAX_USERNAME_LENGTH} characters long"
    if not _USERNAME.fullmatch(username):
        return "A user name begins with a letter or '_' and may end with '$' only"
    return None


def check_host(host: str) -> str:
    if (error := host_error(host)) is not None:
        raise CallError(f"Invalid host {host!r}: {error}", errno.EINVAL)
    return host


def check_username(username: str) -> str:
    if (error := username_error(username)) is not None:
        raise CallError(f"Invalid user name {username!r}: {error}", errno.EINVAL)
    return username
