"""Test-only services that exercise the framework through the public API.

The product has no long or failing job yet, and no CRUD namespace of its own in the foundation, so these
stand in: each method does one thing a test needs (block on a gate, run a real `sleep`, fail with an errno,
flood progress, write a log) and records what it saw so the test can assert on it.
"""
from __future__ import annotations

import asyncio
import errno
from typing import Annotated, Any

from pydantic import Field

from middlewared_plugin.app import App
from middlewared_plugin.errors import CallError, ValidationErrors
from middlewared_plugin.services.base import (
    ApiModel,
    CallContext,
    CRUDService,
    NonEmptyStr,
    Private,
    Service,
    api_method,
)

#: The table of the sample CRUD service; created by its `setup`, not by the product's migrations.
THINGS_TABLE = "sample_thing"


class Inner(ApiModel):
    count: int
    labels: list[str] = []


class NestedArgs(ApiModel):
    data: Inner
    flag: bool = False


class OneIntArgs(ApiModel):
    value: int


class TagArgs(ApiModel):
    tag: str


class SleepArgs(ApiModel):
    seconds: int = 60


class ErrnoArgs(ApiModel):
    code: int


class StormArgs(ApiModel):
    updates: int
    spread_seconds: float = 0.0
    hold_seconds: float = 0.0


class LinesArgs(ApiModel):
    lines: int


class SecretArgs(ApiModel):
    username: str
    password: Annotated[str, Private]


class SampleService(Service):
    namespace = "sample"

    def __init__(self, app: App):
        super().__init__(app)
        #: Opened by tests to let `block`, `gated` and the lock methods finish.
        self.gate = asyncio.Event()
        self.executing = 0
        self.max_executing = 0
        self.pids: list[int] = []
        self.recorded: list[str] = []
        self.lock_order: list[str] = []

    async def _hold(self) -> None:
        self.executing += 1
        self.max_executing = max(self.max_executing, self.executing)
        try:
            await self.gate.wait()
        finally:
            self.executing -= 1

    @api_method(NestedArgs)
    async def nested(self, ctx: CallContext, data: dict[str, Any], flag: bool) -> dict[str, Any]:
        return data

    @api_method(OneIntArgs)
    async def double(self, ctx: CallContext, value: int) -> int:
        return 2 * value

    @api_method(TagArgs)
    async def record(self, ctx: CallContext, tag: str) -> str:
        self.recorded.append(tag)
        return tag

    @api_method()
    async def block(self, ctx: CallContext) -> str:
        """Waits for the gate: counts how many calls of a connection execute at once."""
        await self._hold()
        return "released"

    @api_method()
    async def unserializable(self, ctx: CallContext) -> Any:
        return object()

    @api_method(ErrnoArgs)
    async def fail_plain(self, ctx: CallContext, code: int) -> None:
        raise CallError("Sample failure", code)

    @api_method()
    async def crash(self, ctx: CallContext) -> None:
        raise RuntimeError("not a CallError")

    # Jobs ------------------------------------------------------------------------------------------------

    @api_method(TagArgs, job=True)
    async def gated(self, ctx: CallContext, tag: str) -> str:
        await self._hold()
        return tag

    @api_method(TagArgs, job=True, lock="sample-queue", lock_queue_size=2)
    async def queued(self, ctx: CallContext, tag: str) -> str:
        self.lock_order.append(tag)
        await self._hold()
        return tag

    @api_method(TagArgs, job=True, lock="sample-exclusive", lock_queue_size=0)
    async def exclusive(self, ctx: CallContext, tag: str) -> str:
        await self._hold()
        return tag

    @api_method(SleepArgs, no_authz_required=True, job=True)
    async def sleep(self, ctx: CallContext, seconds: int) -> None:
        """Runs a real `sleep` child; abort must kill it. Any user may start one (a job of their own)."""
        process = await self.app.local_runner.start(["sleep", str(seconds)])
        self.pids.append(process.pid)  # type: ignore[attr-defined]
        await process.wait()

    @api_method(ErrnoArgs, job=True)
    async def fail(self, ctx: CallContext, code: int) -> None:
        raise CallError("Sample job failure", code)

    @api_method(OneIntArgs, job=True)
    async def fail_validation(self, ctx: CallContext, value: int) -> None:
        verrors = ValidationErrors()
        verrors.add("sample_fail.value", f"{value} is not acceptable")
        verrors.add("sample_fail.other", "Also wrong", errno.ENOENT)
        verrors.check()

    @api_method(StormArgs, job=True)
    async def progress_storm(self, ctx: CallContext, updates: int, spread_seconds: float,
                             hold_seconds: float) -> int:
        assert ctx.job is not None
        for i in range(1, updates + 1):
            ctx.job.set_progress(i * 90 // updates, f"step {i}")
            if spread_seconds:
                await asyncio.sleep(spread_seconds / updates)
        await asyncio.sleep(hold_seconds)
        return updates

    @api_method(job=True)
    async def repeat_progress(self, ctx: CallContext) -> None:
        """Reports the same progress three times, spaced beyond the throttle interval."""
        assert ctx.job is not None
        for _ in range(3):
            ctx.job.set_progress(10, "same")
            await asyncio.sleep(0.15)

    @api_method(LinesArgs, job=True, logs=True)
    async def write_logs(self, ctx: CallContext, lines: int) -> int:
        assert ctx.job is not None
        for i in range(1, lines + 1):
            ctx.job.log(f"line {i}")
        return lines

    @api_method(SecretArgs, job=True)
    async def with_secret(self, ctx: CallContext, username: str, password: str) -> str:
        return username


class ThingEntry(ApiModel):
    name: NonEmptyStr
    count: Annotated[int, Field(ge=0)] = 0
    secret: str | None = None


class SampleThingService(CRUDService):
    """A CRUD namespace. Role prefix KEYCHAIN_CREDENTIAL so that READONLY_ADMIN can read but not write."""

    namespace = "sample.thing"
    role_prefix = "KEYCHAIN_CREDENTIAL"
    table = THINGS_TABLE
    entry_name = "SampleThing"
    entry_model = ThingEntry
    create_arg = "sample_thing_create"
    update_arg = "sample_thing_update"
    encrypted_fields = ("secret",)
    secret_fields = ("secret",)

    async def setup(self) -> None:
        await self.app.store.transaction(
            lambda db: db[THINGS_TABLE].create({"id": int, "data": str}, pk="id", if_not_exists=True)
        )

    async def extend(self, ctx: CallContext, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**e, "doubled": 2 * e["count"]} for e in entries]

    async def validate(self, ctx: CallContext, verrors: ValidationErrors, schema: str, data: dict[str, Any],
                       old: dict[str, Any] | None) -> None:
        if data["name"] == "forbidden":
            verrors.add(f"{schema}.name", "This name is reserved")

    async def after_create(self, ctx: CallContext, entry: dict[str, Any]) -> None:
        if entry["name"] == "explode":
            raise CallError("after_create failed on purpose")


async def install(app: App, *services: type[Service]) -> list[Any]:
    """Register test services in a running app and run their setup; returns the instances."""
    instances = [cls(app) for cls in services or (SampleService, SampleThingService)]
    for service in instances:
        app.register(service)
        await service.setup()
    return instances

