"""The legacy DDP-like protocol of `GET /websocket` (reference §1.10), served next to JSON-RPC.

Older clients (and TrueNAS's own `keychaincredential.remote_ssh_semiautomatic_setup`) still speak it:

    C {"msg": "connect", "version": "1", "support": ["1"]}   S {"msg": "connected", "session": "<uuid>"}
    C {"msg": "method", "id", "method", "params"}           S {"msg": "result", "id", "result" | "error"}
    C {"msg": "sub", "id", "name"}                          S {"msg": "ready", "subs": [id]}, then
                                                            S {"msg": "added|changed|removed", "collection", ...}
    C {"msg": "unsub", "id"}
    C {"msg": "ping", "id"}                                 S {"msg": "pong", "id"}

Calls and subscriptions go through `App.dispatch` like JSON-RPC ones (a subscription is `core.subscribe`), so
authentication, roles and argument validation have one path. Job methods always answer with the job id.
Limits, the outgoing queue and event fan-out are `BaseConnection`'s.
"""
from __future__ import annotations

import errno
import uuid
from collections.abc import Callable
from typing import Any

from middlewared_plugin.errors import ValidationErrors, errname
from middlewared_plugin.jobs.job import Job
from middlewared_plugin.protocol import ejson, rpc
from middlewared_plugin.protocol.connection import MAX_INFLIGHT_CALLS, BaseConnection

PROTOCOL_VERSION = "1"


def _really_run_as_option(params: list[Any]) -> list[Any]:
    """v24.10 `replication.run(id, really_run)` -> `replication.run(id, {"really_run": really_run})`."""
    if len(params) >= 2 and isinstance(params[1], bool):
        return [params[0], {"really_run": params[1]}, *params[2:]]
    return params


#: Methods whose v24.10 parameters differ from ours, and how to bring them to the current shape. TrueNAS serves
#: `/websocket` to clients of that release and converts their calls from the v24.10 models; calls to any other
#: method (and calls already in the current shape) pass through unchanged, as there.
V24_10_PARAMS: dict[str, Callable[[list[Any]], list[Any]]] = {
    "replication.run": _really_run_as_option,
}


def error_object(exc: BaseException, *, with_trace: bool) -> dict[str, Any]:
    """The legacy `error` member for an exception raised by a method.

    The same data as JSON-RPC's `error.data`, plus `type`: "VALIDATION" for validation errors, where a
    collection of them (ValidationErrors) carries EAGAIN as TrueNAS's legacy protocol did.
    """
    code, _, data = rpc.error_data(exc, with_trace=with_trace)
    error = {**data, "type": None}
    if code == rpc.INVALID_PARAMS:
        error["type"] = "VALIDATION"
        if isinstance(exc, ValidationErrors):
            error["error"], error["errname"] = errno.EAGAIN, errname(errno.EAGAIN)
    return error


def _plain_error(code: int, reason: str) -> dict[str, Any]:
    return {"error": code, "errname": errname(code), "type": None, "reason": reason, "trace": None, "extra": None}


def _has_id(message: dict[str, Any]) -> bool:
    """Calls and subscriptions are keyed by their id, which must be a string or an integer."""
    return isinstance(message.get("id"), str | int) and not isinstance(message["id"], bool)


class LegacyConnection(BaseConnection):
    """One `/websocket` client."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.session_id = str(uuid.uuid4())
        self._connected = False
        #: Client subscription id -> the `core.subscribe` id kept in `session.subscriptions`.
        self._subs: dict[Any, str] = {}

    async def _receive(self, text: str) -> None:
        try:
            # Extended-JSON values are decoded with a call's arguments (see Connection._receive).
            message = ejson.parse(text)
        except ValueError as exc:
            self._bad_message(f"not JSON ({exc})")
            self._send({"msg": "error", "reason": f"Invalid JSON: {exc}"})
            return
        if not isinstance(message, dict):
            self._bad_message("not an object")
            self._send({"msg": "error", "reason": "Bad request", "offendingMessage": message})
            return
        kind = message.get("msg")
        if kind == "connect":
            self._connect(message)
        elif not self._connected:
            self._send({"msg": "failed", "version": PROTOCOL_VERSION})
        elif kind == "ping":
            self._send({"msg": "pong", **({"id": message["id"]} if "id" in message else {})})
        elif kind == "method" and isinstance(message.get("method"), str) and _has_id(message) \
                and isinstance(message.get("params", []), list):
            self._method(message["id"], message["method"], message.get("params", []))
        elif kind == "sub" and isinstance(message.get("name"), str) and _has_id(message):
            # Awaited in reading order (core.subscribe never waits), so a following unsub finds it.
            await self._subscribe(message["id"], message["name"])
        elif kind == "unsub" and _has_id(message):
            await self._unsubscribe(message["id"])
        else:
            self._bad_message("an unknown or malformed msg")
            self._send({"msg": "error", "reason": "Bad request", "offendingMessage": message})

    def _connect(self, message: dict[str, Any]) -> None:
        if message.get("version") != PROTOCOL_VERSION:
            self._send({"msg": "failed", "version": PROTOCOL_VERSION})
            return
        self._connected = True
        self._send({"msg": "connected", "session": self.session_id})

    # Calls ----------------------------------------------------------------------------------------------

    def _method(self, id_: Any, method: str, params: list[Any]) -> None:
        if not self._start_call(lambda: self._call(id_, method, params)):
            self._send({"msg": "result", "id": id_, "error": _plain_error(
                errno.EBUSY, f"Maximum number of concurrent calls ({MAX_INFLIGHT_CALLS}) has exceeded",
            )})

    async def _call(self, id_: Any, method: str, params: list[Any]) -> None:
        async with self._executing:
            try:
                adapt = V24_10_PARAMS.get(method)
                outcome = await self.app.dispatch(method, adapt(params) if adapt else params,
                                                  session=self.session, message_id=id_)
            except Exception as exc:
                self._log_failure(method, exc)
                self._send({"msg": "result", "id": id_, "error": error_object(
                    exc, with_trace=self.session.authenticated)})
                return
        # Legacy clients follow jobs through `core.get_jobs` events, whatever `legacy_jobs` says.
        result = outcome.id if isinstance(outcome, Job) else outcome
        self._send({"msg": "result", "id": id_, "result": result})

    # Subscriptions --------------------------------------------------------------------------------------

    async def _subscribe(self, id_: Any, name: str) -> None:
        if id_ in self._subs:
            await self._unsubscribe(id_)
        try:
            self._subs[id_] = await self.app.dispatch("core.subscribe", [name], session=self.session)
        except Exception as exc:
            self._log_failure("core.subscribe", exc)
            self._send({"msg": "nosub", "id": id_, "collection": name, "error": error_object(
                exc, with_trace=self.session.authenticated)})
            return
        self._send({"msg": "ready", "subs": [id_]})

    async def _unsubscribe(self, id_: Any) -> None:
        sub_id = self._subs.pop(id_, None)
        # Gone already when the client logged out (auth.logout drops the session's subscriptions).
        if sub_id in self.session.subscriptions:
            await self.app.dispatch("core.unsubscribe", [sub_id], session=self.session)

    # Outgoing -------------------------------------------------------------------------------------------

    def _unserializable(self, message: dict[str, Any]) -> dict[str, Any]:
        reason = "Failed to JSON serialize server message"
        if message.get("msg") == "result":
            return {"msg": "result", "id": message.get("id"), "error": _plain_error(errno.EINVAL, reason)}
        return {"msg": "error", "reason": reason}

    def _event_message(self, params: dict[str, Any]) -> dict[str, Any]:
        return params
