"""One WebSocket client: framing limits, concurrent calls, held-back job calls, event delivery.

`BaseConnection` is what every wire protocol of ours shares (JSON-RPC here, the legacy DDP-like protocol in
`legacy.py`): the read loop with its size limits, the per-connection call limits, the outgoing queue and the
event fan-out from the one bus. Subclasses only parse and shape messages.

Outgoing messages (responses and events) go through one queue in the order they are produced, so a job's
ADDED event always reaches the client before the held-back response of the call that started it.

What a client sends decides how often we log about it (bad messages, methods that fail unexpectedly), so
those lines go through a `LogBudget`: no client, nor all of them together, can flood the log.
"""
from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from jsonrpcserver.sentinels import NOID
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from middlewared_plugin.auth.session import Session
from middlewared_plugin.errors import CallError
from middlewared_plugin.events import Event
from middlewared_plugin.jobs.job import Job
from middlewared_plugin.protocol import ejson, rpc

if TYPE_CHECKING:
    from middlewared_plugin.app import App

logger = logging.getLogger(__name__)

ANONYMOUS_MAX_MESSAGE = 8 * 1024
AUTHENTICATED_MAX_MESSAGE = 64 * 1024
MAX_EXECUTING_CALLS = 10
MAX_INFLIGHT_CALLS = 20
#: A client that lets this many outgoing messages pile up is too slow to keep; it is disconnected.
MAX_OUTGOING_BACKLOG = 20000


class LogBudget:
    """At most `lines` log lines every `window` seconds; the others are counted and the count is logged first
    thing once lines are let through again."""

    def __init__(self, lines: int = 20, window: float = 60.0):
        self.lines = lines
        self.window = window
        self._window_start = -window
        self._used = 0
        self._dropped = 0

    def log(self, level: int, message: str, *args: Any, exc_info: BaseException | None = None) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.window:
            self._window_start, self._used = now, 0
        if self._used >= self.lines:
            self._dropped += 1
            return
        self._used += 1
        if self._dropped:
            logger.warning("%d more such messages were not logged (at most %d every %g s)",
                           self._dropped, self.lines, self.window)
            self._dropped = 0
        logger.log(level, message, *args, exc_info=exc_info)


#: Messages that are not requests (not JSON, not an object, binary, too long): one line each.
bad_messages = LogBudget()
#: Methods that raised something other than a CallError (a bug, or a case nobody planned for): with traceback.
failures = LogBudget()


class BaseConnection(ABC):
    """The protocol-independent part of a client connection; subclasses implement `_receive`."""

    def __init__(self, app: App, ws: ServerConnection, session: Session):
        self.app = app
        self.ws = ws
        self.session = session
        self._outgoing: asyncio.Queue[str | None] = asyncio.Queue()
        self._executing = asyncio.Semaphore(MAX_EXECUTING_CALLS)
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        stop_listening = self.app.bus.listen(self._on_event, self._subscribed)
        writer = asyncio.create_task(self._write_loop())
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    self._bad_message("a binary frame")
                    await self.ws.close(1003, "Binary messages are not supported")
                    break
                limit = AUTHENTICATED_MAX_MESSAGE if self.session.authenticated else ANONYMOUS_MAX_MESSAGE
                if len(message.encode()) > limit:
                    self._bad_message(f"more than {limit} bytes")
                    if self.session.authenticated:
                        await self.ws.close(1009, "Max message length is 64 kB")
                    else:
                        await self.ws.close(1007, "Anonymous connection max message length is 8 kB")
                    break
                try:
                    await self._receive(message)
                except ConnectionClosed:
                    raise
                except Exception as exc:
                    # A bug in handling one message ends this connection only, with one budgeted log entry
                    # (left to the websockets library, every such message would log a full traceback).
                    failures.log(logging.ERROR, "Error handling a message from %s", self.session.address,
                                 exc_info=exc)
                    await self.ws.close(1011, "Internal error")
                    break
        except ConnectionClosed:
            pass
        finally:
            stop_listening()
            for task in list(self._tasks):
                task.cancel()
            self._outgoing.put_nowait(None)
            await asyncio.gather(writer, *self._tasks, return_exceptions=True)

    @abstractmethod
    async def _receive(self, text: str) -> None:
        """Handle one text frame that passed the size limits."""

    def _bad_message(self, reason: str) -> None:
        # The reason only: the message itself may carry a password.
        bad_messages.log(logging.WARNING, "Bad message from %s: %s", self.session.address, reason)

    def _log_failure(self, method: str, exc: BaseException) -> None:
        if not isinstance(exc, CallError):
            failures.log(logging.WARNING, "Exception while calling %s", method, exc_info=exc)

    def _start_call(self, call: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run `call()` as a task of this connection; False (nothing started) when too many are in flight."""
        if self._inflight >= MAX_INFLIGHT_CALLS:
            return False
        self._inflight += 1
        task = asyncio.create_task(call())
        self._tasks.add(task)
        task.add_done_callback(self._call_done)
        return True

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._inflight -= 1
        self._tasks.discard(task)

    # Outgoing -------------------------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        try:
            text = ejson.dumps(message)
        except (TypeError, ValueError, RecursionError):
            # RecursionError: the legacy protocol echoes a bad message, which may nest as deep as JSON parses.
            text = ejson.dumps(self._unserializable(message))
        if self._outgoing.qsize() > MAX_OUTGOING_BACKLOG:
            logger.warning("Closing a client that does not read its messages")
            asyncio.ensure_future(self.ws.close(1008, "Too many unread messages"))
            return
        self._outgoing.put_nowait(text)

    async def _write_loop(self) -> None:
        while (text := await self._outgoing.get()) is not None:
            try:
                await self.ws.send(text)
            except ConnectionClosed:
                return

    def _subscribed(self, collection: str) -> bool:
        names = self.session.subscriptions.values()
        return collection in names or "*" in names

    def _on_event(self, event: Event) -> None:
        if not self._subscribed(event.collection):
            return
        credentials = self.session.credentials
        if event.audience is not None and not event.audience(credentials):
            return
        params: dict[str, Any] = {"msg": event.kind.lower(), "collection": event.collection}
        if event.id is not None:
            params["id"] = event.id
        if event.fields is not None:
            params["fields"] = event.redact(credentials, event.fields) if event.redact else event.fields
        if event.extra:
            params["extra"] = event.extra
        self._send(self._event_message(params))

    @abstractmethod
    def _unserializable(self, message: dict[str, Any]) -> dict[str, Any]:
        """What is sent instead of `message` when it cannot be encoded."""

    @abstractmethod
    def _event_message(self, params: dict[str, Any]) -> dict[str, Any]:
        """The message carrying one event ({msg, collection, id?, fields?, extra?}) to this client."""


class Connection(BaseConnection):
    """The JSON-RPC 2.0 connection of `/api/current` (reference §1.2-§1.7)."""

    # Incoming -------------------------------------------------------------------------------------------

    async def _receive(self, text: str) -> None:
        try:
            # Plain JSON: extended-JSON values are decoded with the arguments, where a bad one is an invalid
            # argument of this request, answered with its id.
            message = ejson.parse(text)
        except ValueError as exc:
            self._bad_message(f"not JSON ({exc})")
            self._send(rpc.error_response(None, rpc.PARSE_ERROR, str(exc)))
            return
        try:
            rpc.validate_request(message)
        except rpc.InvalidRequest as exc:
            self._bad_message(str(exc))
            # An object without an id is a notification: never answered. Anything else is, with its id when it
            # has a valid one (a batch or a non-object has none; answered so the sender does not wait forever).
            if not isinstance(message, dict) or "id" in message:
                id_ = message["id"] if isinstance(message, dict) and rpc.valid_id(message["id"]) else None
                self._send(rpc.error_response(id_, rpc.INVALID_REQUEST, str(exc)))
            return
        id_ = message.get("id", NOID)
        started = self._start_call(lambda: self._call(message["method"], message.get("params", []), id_))
        if not started and id_ is not NOID:
            self._send(rpc.error_response(
                id_, rpc.TOO_MANY_CALLS, f"Maximum number of concurrent calls ({MAX_INFLIGHT_CALLS}) has exceeded",
            ))

    async def _call(self, method: str, params: list[Any], id_: Any) -> None:
        if method not in self.app.methods:
            if id_ is not NOID:
                self._send(rpc.error_response(id_, rpc.METHOD_NOT_FOUND, "Method does not exist"))
            return
        async with self._executing:
            response = await rpc.invoke(method, params, id_, lambda: self._run(method, params, id_),
                                        with_trace=lambda: self.session.authenticated)
        if response is not None:
            self._send(response)

    async def _run(self, method: str, params: list[Any], id_: Any) -> Any:
        try:
            outcome = await self.app.dispatch(
                method, params, session=self.session, message_id=None if id_ is NOID else id_,
            )
            if not isinstance(outcome, Job):
                return outcome
            if self.session.options["legacy_jobs"]:
                return outcome.id
            return await self.app.job_result(outcome)
        except Exception as exc:
            self._log_failure(method, exc)
            raise

    def _unserializable(self, message: dict[str, Any]) -> dict[str, Any]:
        return rpc.error_response(message.get("id"), rpc.SERIALIZE_ERROR, "Failed to JSON serialize server message")

    def _event_message(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "method": "collection_update", "params": params}
