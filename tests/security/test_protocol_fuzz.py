"""Issue 11 "done when": a protocol fuzz test. Seeded random and mutated frames, before and after login, on
`/api/current` and the legacy `/websocket`, against the real server over real WebSockets.

Frames: valid-ish requests with odd params (extended JSON `$date`/`$set`/`$time`/`$type`, deep nesting, huge
and non-finite numbers, lone surrogates), odd ids, messages that are not objects, broken JSON, binary frames,
text frames that are not UTF-8, frames over the size limits. What must hold:

- the server stays up (a fresh connection is served after every batch);
- every request with a valid id is answered, once, with that id; every answer with id null is owed to a frame
  that had no valid id; nothing else is answered;
- connections close only as the protocol says (1003 binary, 1007 not UTF-8 / over 8 KiB before login,
  1009 over 64 KiB after), never 1011;
- no internal exception class reaches a client, and nothing is logged with a traceback.

The seed is fixed so a failure reproduces; PROTOCOL_FUZZ_SEED picks another one. About 30 s on 2 cores.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer

SEED = int(os.environ.get("PROTOCOL_FUZZ_SEED", "20240611"))
#: Batches per (endpoint, login) combination, frames per batch.
BATCHES = 450
FRAMES = 40

INTERNAL = {"OverflowError", "KeyError", "AttributeError", "TypeError", "ValueError", "RecursionError", "IndexError",
            "UnicodeError", "UnicodeEncodeError", "UnicodeDecodeError", "ZeroDivisionError", "AssertionError",
            "RuntimeError", "OSError", "JSONDecodeError", "NameError", "LookupError", "ArithmeticError"}
#: Methods that only read, check or change the caller's own session: safe to call with anything.
METHODS = ["core.ping", "core.set_options", "core.subscribe", "core.unsubscribe", "core.get_jobs", "core.job_abort",
           "core.job_wait", "core.get_methods", "auth.me", "auth.mechanism_choices", "auth.login_ex",
           "auth.generate_token", "replication.query", "replication.get_instance",
           "replication.config.config", "pool.snapshottask.query", "pool.snapshottask.get_instance",
           "keychaincredential.query", "keychaincredential.get_instance", "no.such_method", ""]
ATOMS: list[Any] = [0, 1, -1, 7, 2 ** 31, 2 ** 63, -(2 ** 63) - 1, 10 ** 30, 1.5, -0.0, 1e308, True, False, None, "",
                    "x", "id", "=", "OR", "*", "$date", "WS", "core.get_jobs", "replication.query", "a" * 300,
                    "\u00e9\u4e2d\U0001f600", "\ud800", "\udfff", "\x00", "%Y", "../../etc", "-o", "NaN"]
KEYS = ["legacy_jobs", "py_exceptions", "private_methods", "mechanism", "username", "extra", "order_by", "select",
        "count", "get", "limit", "offset", "$date", "$set", "$time", "$type", "$value", "id", "name", "ttl", "attrs"]
#: Raw JSON number texts Python handles badly or not at all; spliced into frames as they are.
NUMBER_TEXTS = ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "9" * 5000, "-" + "9" * 4400, "1" + "0" * 4300,
                "0.0000000000000000000000000001e-400", "123456789012345678901234567890"]


class HugeNumber:
    """A number written out as raw text (see NUMBER_TEXTS)."""

    def __init__(self, text: str):
        self.text = text


def dump(value: Any) -> str:
    """JSON text of `value`, HugeNumbers spliced in raw."""
    raw: list[str] = []

    def placeholder(number: HugeNumber) -> str:
        raw.append(number.text)
        return f"@huge{len(raw) - 1}@"

    text = json.dumps(value, default=placeholder)
    for i, number in enumerate(raw):
        text = text.replace(f'"@huge{i}@"', number, 1)
    return text


@dataclass
class Frame:
    text: str | bytes
    #: Text frame holding raw bytes that are not UTF-8.
    invalid_utf8: bool = False
    #: The id its answer must carry; None: the frame is owed an answer with id null (when `answered`).
    expect_id: Any = None
    answered: bool = True


@dataclass
class Expectations:
    ids: list[Any] = field(default_factory=list)
    nulls: int = 0


class Generator:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.ids = itertools.count(1)

    # Values -----------------------------------------------------------------------------------------------

    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth > 3 or r < 0.35:
            return self.rng.choice(ATOMS)
        if r < 0.45:
            return HugeNumber(self.rng.choice(NUMBER_TEXTS))
        if r < 0.6:
            return self.extended()
        if r < 0.68:
            return self.nested(self.rng.choice([10, 63, 64, 65, 100, 300]))
        if r < 0.84:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 3))]
        return {self.rng.choice(KEYS): self.value(depth + 1) for _ in range(self.rng.randint(0, 3))}

    def extended(self) -> Any:
        return self.rng.choice([
            {"$date": self.rng.choice([0, 1.5, -1, 10 ** 15, 10 ** 20, -(10 ** 20), 1e300, True, "x",
                                       HugeNumber("1e400"), HugeNumber("NaN"), HugeNumber("9" * 4400)])},
            {"$set": self.rng.choice([[], [1, "a"], [[1]], [{"a": 1}], [{"$date": 0}], [{"$set": [1]}], "x"])},
            {"$time": self.rng.choice(["12:00:00", "25:99", "", 5, "12:00:00.123456+01:00"])},
            {"$type": "date", "$value": self.rng.choice(["2024-02-29", "2023-02-29", 5, None, "", "99999-01-01"])},
            {"$type": "set", "$value": [1]},
            {"$date": 0, "other": 1},
        ])

    def nested(self, depth: int) -> Any:
        value: Any = self.rng.choice([0, {"$date": 0}, {"$set": [[1]]}])
        for _ in range(depth):
            value = [value] if self.rng.random() < 0.7 else {"k": value}
        return value

    def request_id(self) -> tuple[Any, bool]:
        """(id, valid): valid ids are unique (the counter is in each), invalid ones are what JSON-RPC refuses."""
        n = next(self.ids)
        kind = self.rng.random()
        if kind < 0.35:
            return n, True
        if kind < 0.55:
            return self.rng.choice([f"r{n}", f"\ud800{n}", f"{n}\U0001f600", f"{n}" + "x" * 200]), True
        if kind < 0.62:
            return -n - 10 ** 30 if self.rng.random() < 0.5 else 10 ** 30 + n, True
        if kind < 0.7:
            return None, True
        return self.rng.choice([True, False, 1.5, [n], {"n": n}, {"$date": n}, HugeNumber("7" * 5000)]), False

    # Frames -----------------------------------------------------------------------------------------------

    def jsonrpc(self) -> Frame:
        r = self.rng.random()
        if r < 0.62:
            return self.request()
        if r < 0.72:
            text = self.rng.choice(["1", '"x"', "null", "true", "[]", "[1, 2]", "3.5", '"\\ud800"', "[{}]",
                                    dump([self.nested(self.rng.choice([20, 500]))])])
            return Frame(text)
        if r < 0.82:
            broken = self.rng.choice(["{", '{"jsonrpc": "2.0", "id": 1, "method": ', "", " ", "{'a': 1}", "[1,]",
                                      '{"a": 1}}', "\x00", '"\\ud800', "[" * 4000 + "]" * 4000, "{" * 3 + "}" * 3])
            return Frame(broken)
        if r < 0.9:
            # Objects without an id: notifications (valid or not), never answered.
            message = {"jsonrpc": self.rng.choice(["2.0", "1.0", 2]), "method": self.rng.choice(METHODS),
                       "params": [self.value()]}
            if self.rng.random() < 0.3:
                message = {self.rng.choice([k for k in KEYS if k != "id"]): self.value()}
            return Frame(dump(message), answered=False)
        return self.request(envelope_noise=True)

    def request(self, envelope_noise: bool = False) -> Frame:
        id_, valid = self.request_id()
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": self.rng.choice(METHODS),
                                   "params": [self.value() for _ in range(self.rng.randint(0, 3))]}
        if envelope_noise:
            key = self.rng.choice(["jsonrpc", "method", "params", "extra"])
            message[key] = self.value()
        text = dump(message)
        return Frame(text, expect_id=id_ if valid else None)

    def legacy(self) -> Frame:
        r = self.rng.random()
        if r < 0.6:
            id_, valid = self.request_id()
            legacy_valid = valid and id_ is not None
            message = {"msg": "method", "id": id_, "method": self.rng.choice(METHODS[:-1]),
                       "params": [self.value() for _ in range(self.rng.randint(0, 3))]}
            return Frame(dump(message), expect_id=id_ if legacy_valid else None, answered=legacy_valid)
        if r < 0.75:
            message = self.rng.choice([{"msg": "ping"}, {"msg": "ping", "id": self.value()},
                                       {"msg": "sub", "id": f"s{next(self.ids)}", "name": self.rng.choice(METHODS)},
                                       {"msg": "unsub", "id": self.value()}, {"msg": self.value()}, {}])
            return Frame(dump(message), answered=False)
        text = self.rng.choice(["1", "[]", "{", "null", '"\\ud800"', "[" * 2000 + "]" * 2000,
                                dump(self.nested(self.rng.choice([20, 500]))),
                                dump({"msg": "method", **self.extended()})])
        return Frame(text, answered=False)

    def closing(self, logged_in: bool) -> tuple[Frame, int]:
        """A frame the server answers by closing the connection, and the close code it must use."""
        r = self.rng.random()
        if r < 0.4:
            return Frame(b'{"jsonrpc": "2.0", "id": 1, "method": "core.ping"}'), 1003
        if r < 0.7:
            not_utf8 = [b"\xff\xfe", b'{"a": "\xed\xa0\x80"}', b"\xc3\x28", b'"\xf8\x88\x80\x80\x80"']
            return Frame(self.rng.choice(not_utf8), invalid_utf8=True), 1007
        limit = 64 * 1024 if logged_in else 8 * 1024
        return Frame(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "core.ping", "pad": "x" * limit})), (
            1009 if logged_in else 1007)


#: Each connection from its own loopback address: whatever odd login calls the fuzz makes count against that
#: address only, never against the harness's own logins.
_sources = (f"127.0.{n // 250}.{n % 250 + 2}" for n in itertools.count())


class Peer:
    def __init__(self, server: TestServer, legacy: bool, logged_in: bool):
        self.server = server
        self.legacy = legacy
        self.logged_in = logged_in
        self.ws: ClientConnection

    async def open(self) -> None:
        path = "/websocket" if self.legacy else "/api/current"
        self.ws = await connect(f"ws://127.0.0.1:{self.server.port}{path}", max_size=None,
                                local_addr=(next(_sources), 0))
        if self.legacy:
            await self.ws.send(json.dumps({"msg": "connect", "version": "1", "support": ["1"]}))
            assert json.loads(await self.ws.recv())["msg"] == "connected"
        if self.logged_in:
            if self.legacy:
                message = {"msg": "method", "id": "login", "method": "auth.login", "params": [ADMIN, ADMIN_PASSWORD]}
            else:
                message = {"jsonrpc": "2.0", "id": "login", "method": "auth.login", "params": [ADMIN, ADMIN_PASSWORD]}
            await self.ws.send(json.dumps(message))
            while (answer := json.loads(await self.ws.recv())).get("id") != "login":
                pass
            assert answer["result"] is True, answer

    async def send(self, frame: Frame) -> None:
        if isinstance(frame.text, bytes):
            await self.ws.send(frame.text, text=True if frame.invalid_utf8 else None)
        else:
            await self.ws.send(frame.text)

    def check_error(self, answer: dict[str, Any], context: str) -> None:
        error = answer.get("error")
        if not isinstance(error, dict):
            return
        data = error if self.legacy else error.get("data")
        if not isinstance(data, dict):
            return
        trace = data.get("trace")
        if not self.logged_in:
            assert trace is None, f"{context}: a traceback before login: {answer}"
        if isinstance(trace, dict):
            assert trace.get("class") not in INTERNAL, f"{context}: internal exception reached the client: {answer}"
        assert "py_exception" not in data

    async def exchange(self, frames: list[Frame], context: str) -> None:
        """Send every frame, then read until each owed answer came; fail on anything unexpected."""
        owed = Expectations()
        for frame in frames:
            await self.send(frame)
            if frame.answered and frame.expect_id is not None:
                owed.ids.append(frame.expect_id)
            elif frame.answered:
                owed.nulls += 1
        pending = list(owed.ids)
        nulls = 0
        sentinel = f"sentinel-{id(frames)}"
        sentinel_sent = False
        while True:
            if not pending and nulls >= owed.nulls and not sentinel_sent:
                # Everything owed came: a last ping flushes out any answer that should not exist.
                await self.send(Frame(json.dumps(
                    {"msg": "ping", "id": sentinel} if self.legacy
                    else {"jsonrpc": "2.0", "id": sentinel, "method": "core.ping"})))
                sentinel_sent = True
            try:
                text = await asyncio.wait_for(self.ws.recv(), 15)
            except TimeoutError:
                raise AssertionError(f"{context}: no answer for {pending[:5]} (nulls {nulls}/{owed.nulls})") from None
            except ConnectionClosed:
                raise AssertionError(f"{context}: the server closed ({self.ws.protocol.close_rcvd})") from None
            answer = json.loads(text)
            if "method" in answer or answer.get("msg") in ("added", "changed", "removed", "ready", "nosub"):
                continue  # events, subscription replies
            self.check_error(answer, context)
            if self.legacy:
                if answer.get("msg") == "pong" and answer.get("id") == sentinel:
                    assert not pending and nulls == owed.nulls, (context, pending, nulls, owed.nulls)
                    return
                if answer.get("msg") == "result":
                    assert answer["id"] in pending, f"{context}: unexpected result {answer}"
                    pending.remove(answer["id"])
                continue  # pong, error, failed: the legacy protocol's answers to frames we owe nothing
            if answer.get("id") == sentinel:
                assert not pending and nulls == owed.nulls, (context, pending, nulls, owed.nulls)
                return
            if answer.get("id") is None:
                nulls += 1
                assert nulls <= owed.nulls, f"{context}: more answers with id null than owed: {answer}"
            else:
                assert answer["id"] in pending, f"{context}: answer for no request: {answer}"
                pending.remove(answer["id"])

    async def closed_with(self, code: int, context: str) -> None:
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), 10)
        except ConnectionClosed:
            pass
        received = self.ws.protocol.close_rcvd
        assert received is not None and received.code == code, f"{context}: closed with {received}, not {code}"


async def assert_serving(server: TestServer) -> None:
    async with connect(server.url) as ws:
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": "alive", "method": "core.ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["result"] == "pong"


@pytest.mark.parametrize("legacy", [False, True], ids=["api-current", "legacy-websocket"])
async def test_protocol_fuzz(server: TestServer, legacy: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    generator = Generator(random.Random(f"{SEED}-{legacy}"))
    for logged_in in (False, True):
        peer = Peer(server, legacy, logged_in)
        await peer.open()
        for batch in range(BATCHES):
            context = f"seed {SEED}, {'legacy' if legacy else 'json-rpc'}, logged in {logged_in}, batch {batch}"
            frames = [generator.legacy() if legacy else generator.jsonrpc() for _ in range(FRAMES)]
            # Before login, only frames under the 8 KiB limit are part of a batch (others close: see below).
            limit = 64 * 1024 if logged_in else 8 * 1024
            frames = [f for f in frames if len(f.text if isinstance(f.text, bytes) else f.text.encode()) <= limit]
            await peer.exchange(frames, context)
            if generator.rng.random() < 0.25:
                frame, code = generator.closing(logged_in)
                await peer.send(frame)
                await peer.closed_with(code, context)
                await peer.open()
            await assert_serving(server)
        await peer.ws.close()
    # Bad frames log one line each (budgeted), never a traceback; nothing unexpected was raised in a method.
    for record in caplog.records:
        if record.name.startswith(("middlewared_plugin", "websockets")) and record.levelno >= logging.WARNING:
            assert record.exc_info is None, f"logged with a traceback: {record.getMessage()}"
            assert record.getMessage().startswith(("Bad message from", "more such messages")) or \
                "more such messages" in record.getMessage(), record.getMessage()
