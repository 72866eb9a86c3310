"""An asyncio client of the public JSON-RPC 2.0 WebSocket API (reference §1.2-§1.9).

Used by `midclt`, by the test suite and by the server when it talks to another NAS, so it speaks only what
a real TrueNAS speaks:

    async with Client("ws://127.0.0.1:8600/api/current") as c:
        await c.login_with_password("root", "secret")
        result = await c.call("replication.run", 5, job=True, callback=print)

`wss://` verifies the server's certificate against the system's CAs or `ssl_ca_file`, or, with
`ssl_fingerprint`, accepts exactly the certificate whose SHA-256 is that pin (what a self-signed NAS needs).

On connect it sends `core.set_options` (`legacy_jobs=false` by default) and waits for the answer. Job calls
subscribe to `core.get_jobs` first, learn their job id from the event whose `fields.message_ids` holds the
request id, and end on the job's terminal CHANGED event (reference §1.6, §1.9).

Protocol tests get raw access: `send_raw()` writes any frame, `recv_raw()` returns the next message that no
`call()` claimed (notifications and answers to raw requests, in arrival order), and `notifications` queues
every notification.
"""
from __future__ import annotations

import asyncio
import errno
import inspect
import json
import logging
import ssl
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import scramp
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed

from middlewared_plugin.errors import ENOMETHOD, ENOTAUTHENTICATED, CallError, ValidationErrors
from middlewared_plugin.protocol import ejson
from middlewared_plugin.protocol.tls import fingerprint, normalize_fingerprint

logger = logging.getLogger(__name__)

DEFAULT_CALL_TIMEOUT = 60.0
HANDSHAKE_TIMEOUT = 30.0
#: After a new-style job's response, how long its terminal event may still take to arrive (§1.6: either order).
FINAL_EVENT_GRACE = 5.0
API_PATH = "/api/current"
JOB_TERMINAL_STATES = frozenset({"SUCCESS", "FAILED", "ABORTED"})
#: Bounds the queues and the job cache of long-lived connections; the oldest entries are dropped.
MAX_QUEUED = 10000
MAX_CACHED_JOBS = 1000
MAX_MESSAGE_SIZE = 256 * 1024 * 1024
METHOD_NOT_FOUND = -32601
#: The iteration counts TrueNAS's clients accept from a server (more would let a server make us burn CPU).
SCRAM_MIN_ITERATIONS = 50_000
SCRAM_MAX_ITERATIONS = 5_000_000
INVALID_PARAMS = -32602

_UNSET: Any = object()
_CLOSED: Any = object()

JobCallback = Callable[[dict[str, Any]], Any]
EventCallback = Callable[[dict[str, Any]], Any]


class ClientException(CallError):
    """A call failed on the server (or the connection did). `str()` is the server's `reason` verbatim."""

    def __init__(
        self,
        reason: str,
        errno_: int | None = None,
        *,
        errname: str | None = None,
        trace: dict[str, Any] | None = None,
        extra: Any = None,
        code: int | None = None,
    ):
        super().__init__(reason, errno.EFAULT if errno_ is None else errno_, extra)
        self.errno = errno_  # keep None when the server sent none
        self.error = reason
        self.reason = reason
        self.errname = errname
        self.trace = trace
        self.code = code

    def __str__(self) -> str:
        return self.reason


class CallTimeout(ClientException):
    def __init__(self, method: str, timeout: float):
        super().__init__(f"Call timeout: {method} did not answer within {timeout:g} seconds", errno.ETIMEDOUT)


class ConnectionLost(ClientException):
    def __init__(self, detail: str = ""):
        super().__init__("Connection closed" + (f": {detail}" if detail else ""), errno.ECONNRESET)


def error_from_rpc(error: dict[str, Any]) -> CallError:
    """Turn a JSON-RPC `error` object into the exception it stands for (reference §1.5)."""
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    extra = data.get("extra")
    if error.get("code") == INVALID_PARAMS and isinstance(extra, list) and all(
        isinstance(t, list) and len(t) >= 2 for t in extra
    ):
        return ValidationErrors((t[0], t[1], t[2] if len(t) > 2 else errno.EINVAL) for t in extra)
    return ClientException(
        data.get("reason") or str(error.get("message", "Unknown error")),
        data.get("error"),
        errname=data.get("errname"),
        trace=data.get("trace"),
        extra=extra,
        code=error.get("code"),
    )


def job_error(job: dict[str, Any]) -> CallError:
    """The exception a FAILED or ABORTED job stands for, as `truenas_api_client` raises it."""
    exc_info = job.get("exc_info") or {}
    if exc_info.get("type") == "VALIDATION" and isinstance(exc_info.get("extra"), list):
        return ValidationErrors(
            (t[0], t[1], t[2] if len(t) > 2 else errno.EINVAL) for t in exc_info["extra"]
        )
    if job.get("state") == "ABORTED":
        return ClientException(job.get("error") or "Job was aborted", errno.ECANCELED)
    return ClientException(
        job.get("error") or f"Job {job.get('id')} failed",
        exc_info.get("errno"),
        trace={"class": exc_info.get("type"), "formatted": job.get("exception"), "repr": exc_info.get("repr")},
        extra=exc_info.get("extra"),
    )


def split_uri(uri: str, api_path: str = API_PATH) -> tuple[str | None, str]:
    """`ws+unix:///run/x.sock` -> ("/run/x.sock", "ws://localhost/api/current"); `ws://h:1` -> (None, "ws://h:1/api/current")."""
    if uri.startswith("ws+unix://"):
        return uri[len("ws+unix://"):], f"ws://localhost{api_path}"
    parts = urlsplit(uri)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"Unsupported URI {uri!r}: use ws://, wss:// or ws+unix://")
    if parts.path in ("", "/"):
        parts = parts._replace(path=api_path)
    return None, urlunsplit(parts)


class _JobWaiter:
    """One `call(job=True)`: learns its job id, feeds the callback, resolves on the terminal state."""

    def __init__(self, callback: JobCallback | None):
        loop = asyncio.get_running_loop()
        self.callback = callback
        self.job_id: int | None = None
        self.bound: asyncio.Future[int] = loop.create_future()
        self.done: asyncio.Future[dict[str, Any]] = loop.create_future()


class Client:
    def __init__(
        self,
        uri: str,
        *,
        verify_ssl: bool = True,
        ssl_ca_file: str | Path | None = None,
        ssl_fingerprint: str | None = None,
        legacy_jobs: bool = False,
        private_methods: bool = False,
        py_exceptions: bool = False,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        ejson_dates: bool = False,
        api_path: str = API_PATH,
    ):
        self.uri = uri
        self.verify_ssl = verify_ssl
        self.ssl_ca_file = ssl_ca_file
        #: 64 lowercase hex digits; ValueError here, not at connect time, for a malformed pin.
        self.ssl_fingerprint = normalize_fingerprint(ssl_fingerprint) if ssl_fingerprint else None
        self.legacy_jobs = legacy_jobs
        self.private_methods = private_methods
        self.py_exceptions = py_exceptions
        self.call_timeout = call_timeout
        self.ejson_dates = ejson_dates
        self.api_path = api_path
        self.connection: ClientConnection | None = None
        self.options: dict[str, Any] = {}
        #: Every notification received, in order (bounded: the oldest is dropped).
        self.notifications: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._subscriptions: dict[str, tuple[str, EventCallback, Callable[[Any], Any] | None]] = {}
        self._jobs_subscription: str | None = None
        self._jobs_subscription_lock = asyncio.Lock()
        self._jobs: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._waiters_by_msg: dict[str, _JobWaiter] = {}
        self._waiters_by_job: dict[int, _JobWaiter] = {}
        self._reader: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # -- connection --------------------------------------------------------------------------------------

    async def connect(self) -> Client:
        """Open the socket and finish the `core.set_options` handshake."""
        sock_path, ws_uri = split_uri(self.uri, self.api_path)
        if self.ssl_fingerprint is not None and (sock_path is not None or not ws_uri.startswith("wss://")):
            raise ClientException(f"A pinned certificate fingerprint needs a wss:// URI, not {self.uri}", errno.EINVAL)
        kwargs: dict[str, Any] = {"max_size": MAX_MESSAGE_SIZE, "open_timeout": HANDSHAKE_TIMEOUT}
        if sock_path is not None:
            self.connection = await unix_connect(sock_path, ws_uri, **kwargs)
        else:
            if ws_uri.startswith("wss://"):
                kwargs["ssl"] = self._ssl_context()
            self.connection = await connect(ws_uri, **kwargs)
            if self.ssl_fingerprint is not None:
                await self._check_pin()
        self._reader = asyncio.create_task(self._read_loop(), name=f"client-reader {self.uri}")
        try:
            self.options = await self.call(
                "core.set_options",
                {"legacy_jobs": self.legacy_jobs, "private_methods": self.private_methods,
                 "py_exceptions": self.py_exceptions},
                timeout=HANDSHAKE_TIMEOUT,
            )
        except (CallError, ConnectionClosed) as e:
            await self.close()
            raise ClientException(f"Failed connection handshake: {e}", errno.ECONNREFUSED) from e
        return self

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ssl_ca_file)
        if self.ssl_fingerprint is not None or not self.verify_ssl:
            # A pin replaces CA and host name checks: _check_pin compares the exact certificate instead.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _check_pin(self) -> None:
        """Before the first frame: only the upgrade request, which carries no credentials, has gone out."""
        assert self.connection is not None
        der = self.connection.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        actual = fingerprint(der)
        if normalize_fingerprint(actual) != self.ssl_fingerprint:
            await self.connection.close()
            raise ClientException(f"The server's certificate (SHA-256 {actual}) does not match the pinned "
                                  "fingerprint", errno.EACCES)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        if self._reader is not None:
            await self._reader

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code if self.connection else None

    @property
    def close_reason(self) -> str | None:
        return self.connection.close_reason if self.connection else None

    # -- calls -------------------------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        *params: Any,
        job: bool = False,
        callback: JobCallback | None = None,
        timeout: float | None = _UNSET,
    ) -> Any:
        """Call `method` with positional `params` and return its result.

        `timeout` (default `call_timeout`, None = forever) bounds the wait for the answer or, for a job,
        for its id; a job's run itself is awaited without limit. `callback` gets the job dict on every
        event of that job. Raises ValidationErrors for -32602, ClientException otherwise.
        """
        timeout = self.call_timeout if timeout is _UNSET else timeout
        if not job:
            return _result(await self._request(method, params, timeout))
        await self._ensure_jobs_subscription()
        waiter = _JobWaiter(callback)
        msg_id = str(uuid.uuid4())
        self._waiters_by_msg[msg_id] = waiter
        try:
            return await self._run_job(msg_id, waiter, method, params, timeout)
        finally:
            self._waiters_by_msg.pop(msg_id, None)
            if waiter.job_id is not None:
                self._waiters_by_job.pop(waiter.job_id, None)

    async def _run_job(
        self, msg_id: str, waiter: _JobWaiter, method: str, params: tuple[Any, ...], timeout: float | None
    ) -> Any:
        response_fut = await self._send_request(msg_id, method, params)
        try:
            # Phase 1 (bounded): the job announces itself, or the call answers first.
            done, _ = await asyncio.wait({response_fut, waiter.bound}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise CallTimeout(method, timeout or 0)
            if not waiter.bound.done():
                if not self.legacy_jobs:
                    # No event named our request before the answer, so none will: the answer is the result.
                    return _result(response_fut.result())
                self._bind(waiter, _result(response_fut.result()))
            # Phase 2 (unbounded): the terminal event. A new-style answer may overtake it (§1.6).
            if not self.legacy_jobs:
                await asyncio.wait({waiter.done, response_fut}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done.done():
                    try:
                        await asyncio.wait_for(asyncio.shield(waiter.done), FINAL_EVENT_GRACE)
                    except TimeoutError:
                        return _result(response_fut.result())
            job = await waiter.done
        finally:
            self._pending.pop(msg_id, None)
            for fut in (response_fut, waiter.bound, waiter.done):
                _discard(fut)
        if job.get("state") == "SUCCESS":
            return job.get("result")
        raise job_error(job)

    async def _request(self, method: str, params: tuple[Any, ...] | list[Any], timeout: float | None
                       ) -> dict[str, Any]:
        msg_id = str(uuid.uuid4())
        fut = await self._send_request(msg_id, method, params)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise CallTimeout(method, timeout or 0) from None
        finally:
            self._pending.pop(msg_id, None)

    async def _send_request(self, msg_id: str, method: str, params: tuple[Any, ...] | list[Any]
                            ) -> asyncio.Future[dict[str, Any]]:
        """Register the answer's future, then send: the answer can never arrive unclaimed."""
        if self.connection is None or self._reader is None or self._reader.done():
            raise ConnectionLost("not connected")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        message = ejson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": list(params)})
        try:
            await self.connection.send(message)
        except ConnectionClosed as e:
            self._pending.pop(msg_id, None)
            raise ConnectionLost(str(e)) from None
        return fut

    async def _ensure_jobs_subscription(self) -> None:
        """Subscribe to `core.get_jobs` once; errno 207 (not logged in yet) is ignored and retried later."""
        async with self._jobs_subscription_lock:  # concurrent job calls must not subscribe twice
            if self._jobs_subscription is not None:
                return
            try:
                self._jobs_subscription = await self.call("core.subscribe", "core.get_jobs")
            except ClientException as e:
                if e.errno != ENOTAUTHENTICATED:
                    raise

    # -- events ------------------------------------------------------------------------------------------

    async def subscribe(self, name: str, callback: EventCallback,
                        on_end: Callable[[Any], Any] | None = None) -> str:
        """Subscribe to event `name`; `callback(params)` gets each `collection_update`'s params
        (`{msg, collection, id, fields[, extra]}`); `on_end(error)` runs if the server ends the subscription."""
        sub_id = await self.call("core.subscribe", name)
        self._subscriptions[sub_id] = (name, callback, on_end)
        return sub_id

    async def unsubscribe(self, sub_id: str) -> None:
        self._subscriptions.pop(sub_id, None)
        await self.call("core.unsubscribe", sub_id)

    # -- authentication ----------------------------------------------------------------------------------

    async def login_ex(self, credentials: dict[str, Any]) -> dict[str, Any]:
        """`auth.login_ex` with a `{"mechanism": ...}` object; returns the response (`response_type`...)."""
        return await self.call("auth.login_ex", credentials)

    async def login_with_password(self, username: str, password: str) -> bool:
        """PASSWORD_PLAIN, falling back to legacy `auth.login` on servers without `auth.login_ex`."""
        try:
            response = await self.login_ex({"mechanism": "PASSWORD_PLAIN", "username": username,
                                            "password": password})
        except ClientException as e:
            if not _method_missing(e):
                raise
            return bool(await self.call("auth.login", username, password))
        return response.get("response_type") == "SUCCESS"

    async def login_with_api_key(self, api_key: str, username: str | None = None, *, plain: bool = False) -> bool:
        """With `username` (both mechanisms of login_ex need it): SCRAM-SHA-512 where the server offers it and
        `plain` is not asked for, else API_KEY_PLAIN. Without: legacy `auth.login_with_api_key`."""
        if username is None:
            return bool(await self.call("auth.login_with_api_key", api_key))
        if not plain and "SCRAM" in await self._mechanisms():
            return await self._login_scram(api_key, username)
        try:
            response = await self.login_ex({"mechanism": "API_KEY_PLAIN", "username": username,
                                            "api_key": api_key})
        except ClientException as e:
            if not _method_missing(e):
                raise
            return bool(await self.call("auth.login_with_api_key", api_key))
        return response.get("response_type") == "SUCCESS"

    async def _mechanisms(self) -> list[str]:
        try:
            return list(await self.call("auth.mechanism_choices"))
        except ClientException as e:
            if not _method_missing(e):
                raise
            return []

    async def _login_scram(self, api_key: str, username: str) -> bool:
        """RFC 5802 through `auth.login_ex`: user `<username>:<key id>`, password the key's secret. The server
        must prove it knows the key too (its final signature), or this raises."""
        key_id, _, secret = api_key.partition("-")
        exchange = scramp.ScramClient(["SCRAM-SHA-512"], f"{username}:{key_id}", secret)

        async def step(scram_type: str, rfc_str: str) -> str | None:
            response = await self.login_ex({"mechanism": "SCRAM", "scram_type": scram_type, "rfc_str": rfc_str})
            return response["rfc_str"] if response.get("response_type") == "SCRAM_RESPONSE" else None

        server_first = await step("CLIENT_FIRST_MESSAGE", exchange.get_client_first())
        if server_first is None:
            return False
        iterations = int(dict(f.split("=", 1) for f in server_first.split(",") if "=" in f).get("i", "0"))
        if not SCRAM_MIN_ITERATIONS <= iterations <= SCRAM_MAX_ITERATIONS:
            raise ClientException(f"The server asked for {iterations} SCRAM iterations", errno.EINVAL)
        exchange.set_server_first(server_first)
        # PBKDF2 over hundreds of thousands of rounds: off the event loop.
        server_final = await step("CLIENT_FINAL_MESSAGE", await asyncio.to_thread(exchange.get_client_final))
        if server_final is None:
            return False
        try:
            exchange.set_server_final(server_final)
        except scramp.ScramException:
            raise ClientException("The server's SCRAM signature is wrong: it does not know this key",
                                  ENOTAUTHENTICATED) from None
        return True

    async def login_with_token(self, token: str) -> bool:
        try:
            response = await self.login_ex({"mechanism": "TOKEN_PLAIN", "token": token})
        except ClientException as e:
            if not _method_missing(e):
                raise
            return bool(await self.call("auth.login_with_token", token))
        return response.get("response_type") == "SUCCESS"

    async def ping(self) -> str:
        return await self.call("core.ping")

    # -- raw access (protocol tests) ---------------------------------------------------------------------

    async def send_raw(self, frame: str | bytes) -> None:
        """Send one frame exactly as given (text for str, binary for bytes)."""
        if self.connection is None:
            raise ConnectionLost("not connected")
        await self.connection.send(frame)

    async def recv_raw(self, timeout: float | None = 10.0) -> Any:
        """The next message no `call()` claimed (parsed JSON, or the text if it is not JSON).

        Raises ConnectionLost once the connection is closed and nothing is left, TimeoutError on timeout.
        """
        item = await asyncio.wait_for(self._inbox.get(), timeout)
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)  # later calls see the close too
            raise ConnectionLost(f"code {self.close_code}: {self.close_reason}")
        return item

    def drain_raw(self) -> list[Any]:
        """Empty the raw inbox and `notifications`; returns what the inbox held (start a test from a clean slate)."""
        drained = []
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if item is _CLOSED:
                self._inbox.put_nowait(_CLOSED)
                break
            drained.append(item)
        while not self.notifications.empty():
            self.notifications.get_nowait()
        return drained

    # -- reader ------------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        assert self.connection is not None
        error = ""
        try:
            async for frame in self.connection:
                self._handle(frame)
        except ConnectionClosed as e:
            error = str(e)
        finally:
            self._connection_lost(error)

    def _handle(self, frame: str | bytes) -> None:
        try:
            message = ejson.loads(frame) if self.ejson_dates else json.loads(frame)
        except ValueError:
            _put(self._inbox, frame)
            return
        if not isinstance(message, dict):
            _put(self._inbox, message)
            return
        if "method" not in message:
            fut = self._pending.pop(message.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(message)
            else:
                _put(self._inbox, message)
            return
        _put(self.notifications, message)
        _put(self._inbox, message)
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        if message["method"] == "collection_update":
            if params.get("collection") == "core.get_jobs" and isinstance(params.get("fields"), dict):
                self._job_event(params)
            for name, callback, _ in list(self._subscriptions.values()):
                if name in (params.get("collection"), "*"):
                    self._run_callback(callback, params)
        elif message["method"] == "notify_unsubscribed":
            for sub_id, (name, _, on_end) in list(self._subscriptions.items()):
                if name == params.get("collection"):
                    del self._subscriptions[sub_id]
                    if on_end is not None:
                        self._run_callback(on_end, params.get("error"))

    def _job_event(self, params: dict[str, Any]) -> None:
        fields = params["fields"]
        job_id = params.get("id", fields.get("id"))
        job = self._jobs.pop(job_id, {})
        job.update(fields)
        self._jobs[job_id] = job
        while len(self._jobs) > MAX_CACHED_JOBS:
            self._jobs.popitem(last=False)
        waiter = self._waiters_by_job.get(job_id)
        if waiter is None:
            for msg_id in job.get("message_ids") or ():
                candidate = self._waiters_by_msg.get(msg_id)
                if candidate is not None and candidate.job_id is None:
                    waiter = candidate
                    self._bind(waiter, job_id, feed=False)
                    break
        if waiter is not None:
            self._feed(waiter, job)

    def _bind(self, waiter: _JobWaiter, job_id: Any, feed: bool = True) -> None:
        if not isinstance(job_id, int):
            raise ClientException(f"Expected a job id, the server answered {job_id!r}")
        waiter.job_id = job_id
        self._waiters_by_job[job_id] = waiter
        if not waiter.bound.done():
            waiter.bound.set_result(job_id)
        if feed and job_id in self._jobs:
            # Legacy mode: events that arrived before the answer carrying the id.
            self._feed(waiter, self._jobs[job_id])

    def _feed(self, waiter: _JobWaiter, job: dict[str, Any]) -> None:
        if waiter.done.done():
            return
        if waiter.callback is not None:
            self._run_callback(waiter.callback, dict(job))
        if job.get("state") in JOB_TERMINAL_STATES:
            waiter.done.set_result(dict(job))

    def _run_callback(self, callback: Callable[[Any], Any], arg: Any) -> None:
        # Callbacks run inline and must not block; coroutines run as tasks so they may call the client.
        try:
            result = callback(arg)
        except Exception:
            logger.exception("Client callback %r failed", callback)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _connection_lost(self, detail: str) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(detail))
        self._pending.clear()
        for waiter in {*self._waiters_by_msg.values(), *self._waiters_by_job.values()}:
            if not waiter.done.done():
                if waiter.job_id is not None and waiter.callback is not None:
                    job = dict(self._jobs.get(waiter.job_id, {"id": waiter.job_id}), state="UNKNOWN")
                    self._run_callback(waiter.callback, job)
                waiter.done.set_exception(ConnectionLost(detail))
                if not waiter.bound.done():
                    waiter.bound.set_exception(ConnectionLost(detail))
        _put(self._inbox, _CLOSED)


def _method_missing(e: ClientException) -> bool:
    """A server without `auth.login_ex` (older TrueNAS) answers one of these."""
    return e.code == METHOD_NOT_FOUND or e.errno == ENOMETHOD or str(e) == "Method does not exist"


def _result(response: dict[str, Any]) -> Any:
    if "error" in response:
        raise error_from_rpc(response["error"])
    return response.get("result")


def _discard(fut: asyncio.Future[Any]) -> None:
    """Cancel a future we no longer need, marking a stored exception as seen so asyncio does not warn."""
    if fut.done():
        if not fut.cancelled():
            fut.exception()
    else:
        fut.cancel()


def _put(queue: asyncio.Queue[Any], item: Any) -> None:
    if queue.qsize() >= MAX_QUEUED:
        queue.get_nowait()
    queue.put_nowait(item)
