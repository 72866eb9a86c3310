"""The executor: runs a `Plan` through a `Transport`, step by step, and decides nothing.

Each runnable dataset plan's steps run in order (parents before children; a plan whose `depends_on` target
was not created is skipped). Sends go through `transport.pipe`, which counts every byte in our own pipe;
totals come from `zfs send -nvP` where the sending ZFS has it (exact), otherwise from the planner's
`referenced`/`written` figures (estimates). ZFS options the plan asks for but a host lacks are dropped when
they only change efficiency (-L, -c, -e, recv -s) and refused with a clear error when they change the
result (-w, -x, -o, -u, encryption).

Transient failures (connection lost, broken pipe, stall) are retried up to `retries` times with
exponential backoff; before each retry `replan()` lists both sides afresh, so an interrupted receive is
resumed (or its stale token discarded) or the step is simply sent again. Cancelling `execute` kills the
pipeline; ZFS discards a partial non-resumable receive, so the next run plans from a consistent target.

`log(line)` receives every command run (argv joined with `shlex.join`), every snapshot sent or
destroyed and every rollback with what it discarded. Key material travels on stdin only, so it never
appears in a logged command.

Nothing on the target is discarded unless the plan names it: receives are never forced (-F) into an
incremental, rollbacks are explicit steps. A send whose plan carries `if_modified` (zfs-fuse, which cannot
report `written`) runs that rollback only when the receive is refused because the target changed, then
sends again; without it, such a refusal is reported and the target kept as it is.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import CommandFailed, LoggingRunner
from middlewared_plugin.replication.plan import (
    ByteEstimate,
    CreateParents,
    DatasetPlan,
    DestroyReason,
    DestroySnapshots,
    DiscardResumeToken,
    EncryptionMode,
    FullSend,
    IncrementalSend,
    Mount,
    Plan,
    ReceiveOptions,
    Resume,
    Rollback,
    RollbackReason,
    SendStep,
    SetReadonly,
    Step,
)
from middlewared_plugin.replication.transports.base import PipeFailed, Transport
from middlewared_plugin.zfs import (
    Feature,
    Features,
    Zfs,
    is_modified_refusal,
    recv_abort_argv,
    recv_argv,
    resume_send_argv,
    send_argv,
)

#: Where the key of a new encryption root is written on the target while it is received ("$TrueNAS").
TRUENAS_KEY_LOCATION = "$TrueNAS"
_KEY_DIRECTORY = "/tmp"
_RATE_WINDOW = 5.0  # seconds of byte samples the rate is averaged over
_SIZE_LINE = re.compile(r"^size\s+(\d+)\s*$", re.MULTILINE)
# Errnos a control command fails with when its SSH connection is gone (or not back yet).
_CONNECTION_ERRNOS = (errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.EPIPE)


@dataclass(frozen=True)
class Progress:
    """One progress report. Byte figures count what crossed our pipe; `bytes_total` is None while some
    pending step's size is unknown; `percent` weighs each step by its (estimated) bytes."""

    dataset: str | None
    snapshot: str | None
    snapshots_sent: int
    snapshots_total: int
    bytes_sent: int
    bytes_total: int | None
    bytes_total_exact: bool
    rate: float | None  # bytes per second over the last few seconds
    eta: float | None  # seconds
    percent: float


@dataclass(frozen=True)
class ExecuteOptions:
    retries: int = 5
    #: Seconds without a byte after which a transfer is killed and retried.
    stall_timeout: float | None = 600.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    #: Key for targets the plan makes encryption roots (NEW_KEY): hex digits or a passphrase.
    encryption_key: str | None = field(default=None, repr=False)
    #: Fresh listings -> fresh plan; called before each retry. Without it a transient failure is final.
    replan: Callable[[], Awaitable[Plan]] | None = None
    #: Ask the sending ZFS for exact stream sizes (`zfs send -nvP`) before sending, where it can.
    exact_estimates: bool = True


@dataclass
class ExecuteResult:
    #: "target@snapshot" for every snapshot that arrived, in order.
    snapshots_sent: list[str] = field(default_factory=list)
    #: The same snapshots as "source@snapshot" (what the task state's `last_snapshot` names).
    source_snapshots_sent: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    #: "dataset@snapshot" for every snapshot destroyed (retention, rollback, from scratch).
    destroyed: list[str] = field(default_factory=list)
    #: "dataset@snapshot" for every rollback that discarded changes made on the target (not our own mounts').
    rolled_back: list[str] = field(default_factory=list)
    #: Target dataset -> why it was not (fully) replicated: conflicts and failures.
    errors: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


Log = Callable[[str], None]
ProgressCallback = Callable[[Progress], None]


def is_transient(error: BaseException) -> bool:
    """Whether retrying after `error` can help: a broken stream or a lost connection, not a ZFS refusal."""
    if isinstance(error, PipeFailed):
        return error.transient
    if isinstance(error, CallError):
        return error.errno in _CONNECTION_ERRNOS
    return isinstance(error, ConnectionError | TimeoutError)


@dataclass
class _StepWeight:
    estimate: int | None
    exact: bool
    sent: int = 0
    done: bool = False


class _Meter:
    """Byte and snapshot accounting across steps and attempts; builds the `Progress` values."""

    def __init__(self, callback: ProgressCallback):
        self.callback = callback
        self.snapshots_sent = 0
        self.snapshots_total = 0
        self.bytes_sent = 0
        self.finished_bytes = 0  # actual bytes of finished steps, all attempts
        self.finished_steps = 0
        self.wasted = 0  # bytes of failed transfers: they crossed the pipe, then were discarded
        self.pending: list[_StepWeight] = []
        self.current: _StepWeight | None = None
        self.dataset: str | None = None
        self.snapshot: str | None = None
        self.samples: deque[tuple[float, int]] = deque()

    def load(self, weights: list[_StepWeight], snapshots: int) -> None:
        """A (re)plan's sends replace whatever the previous attempt left pending."""
        self.abandon()
        self.pending = list(weights)
        self.snapshots_total = self.snapshots_sent + snapshots

    def abandon(self, weights: Sequence[_StepWeight] = ()) -> None:
        """The current transfer failed; `weights` (a failed dataset's remaining sends) will not run."""
        if self.current is not None:
            self.wasted += self.current.sent
            self.current = None
        gone = {id(w) for w in weights}
        self.pending = [w for w in self.pending if id(w) not in gone]

    def start(self, weight: _StepWeight, dataset: str, snapshot: str) -> None:
        self.current, self.dataset, self.snapshot = weight, dataset, snapshot
        self.report()

    def add(self, n: int) -> None:
        assert self.current is not None
        self.current.sent += n
        self.bytes_sent += n
        now = time.monotonic()
        self.samples.append((now, self.bytes_sent))
        while len(self.samples) > 2 and now - self.samples[0][0] > _RATE_WINDOW:
            self.samples.popleft()
        self.report()

    def resend(self) -> None:
        """The current transfer was refused and starts over: what crossed the pipe was discarded."""
        assert self.current is not None
        self.wasted += self.current.sent
        self.current.sent = 0
        self.report()

    def finish(self, snapshots: int) -> None:
        assert self.current is not None
        self.finished_bytes += self.current.sent
        self.finished_steps += 1
        self.pending = [w for w in self.pending if w is not self.current]
        self.current = None
        self.snapshots_sent += snapshots
        self.report()

    def percent(self) -> float:
        if not self.pending:
            return 100.0
        known = [w.estimate for w in self.pending if w.estimate is not None]
        if known:  # by bytes; a step of unknown size weighs the mean known one
            fallback = sum(known) // len(known)
            weights = [(max(w.estimate if w.estimate is not None else fallback, w.sent, 1), w.sent)
                       for w in self.pending]
            done = self.finished_bytes
        else:  # no sizes at all (zfs-fuse incrementals): every step weighs the same
            weights = [(1, 0.5 if w.sent else 0) for w in self.pending]
            done = self.finished_steps
        total = done + sum(w for w, _ in weights)
        return 100.0 * (done + sum(min(sent / w, 0.99) * w for w, sent in weights)) / total

    def report(self) -> None:
        all_known = all(w.estimate is not None for w in self.pending)
        remaining = sum(max(w.estimate or 0, w.sent) for w in self.pending)
        bytes_total = self.wasted + self.finished_bytes + remaining if all_known else None
        rate = None
        if len(self.samples) >= 2 and self.samples[-1][0] > self.samples[0][0]:
            (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
            rate = (b1 - b0) / (t1 - t0)
        eta = (bytes_total - self.bytes_sent) / rate if rate and bytes_total is not None else None
        self.callback(Progress(
            dataset=self.dataset, snapshot=self.snapshot, snapshots_sent=self.snapshots_sent,
            snapshots_total=self.snapshots_total, bytes_sent=self.bytes_sent, bytes_total=bytes_total,
            bytes_total_exact=all_known and all(w.exact for w in self.pending), rate=rate, eta=eta,
            percent=round(self.percent(), 2),
        ))


class Executor:
    def __init__(self, transport: Transport, progress: ProgressCallback, log: Log, options: ExecuteOptions):
        self.transport = transport
        self.log = log
        self.options = options
        self.source = Zfs(LoggingRunner(transport.source, log))
        self.target = Zfs(LoggingRunner(transport.target, log))
        self.meter = _Meter(progress)
        self.result = ExecuteResult()

    async def run(self, plan: Plan) -> ExecuteResult:
        attempt = 0
        current: Plan | None = plan
        while True:
            self.result.attempts = attempt + 1
            try:
                if current is None:
                    assert self.options.replan is not None
                    current = await self.options.replan()
                await self.run_plan(current)
                break
            except Exception as e:
                if not is_transient(e) or attempt >= self.options.retries or self.options.replan is None:
                    raise
                delay = min(self.options.backoff_initial * 2 ** attempt, self.options.backoff_max)
                attempt += 1
                self.log(f"Transient error, retry {attempt} of {self.options.retries} in {delay:g}s: {e}")
                await asyncio.sleep(delay)
                current = None  # plan again from fresh listings: resume, discard or resend
        self.meter.report()
        return self.result

    async def run_plan(self, plan: Plan) -> None:
        self.result.errors = {d.target: "; ".join(c.message for c in d.conflicts)
                              for d in plan.datasets if d.conflicts}
        runnable = [d for d in plan.datasets if d.runnable]
        estimates = await self.estimates(runnable)
        weights: dict[int, _StepWeight] = {}
        for d in runnable:
            for s in d.sends:
                est = estimates.get(id(s), s.estimate)
                weights[id(s)] = _StepWeight(est.bytes if est else None, bool(est and est.exact))
        self.meter.load(list(weights.values()), sum(len(s.arrives) for d in runnable for s in d.sends))
        failed: set[str] = set(self.result.errors)
        for d in runnable:
            if d.depends_on is not None and d.depends_on in failed:
                self.meter.abandon([weights[id(s)] for s in d.sends])
                failed.add(d.target)
                self.result.errors[d.target] = f"not replicated: its parent {d.depends_on!r} was not replicated"
                continue
            try:
                for step in d.steps:
                    await self.step(step, weights)
            except Exception as e:
                if is_transient(e):
                    raise
                self.meter.abandon([weights[id(s)] for s in d.sends])
                failed.add(d.target)
                self.result.errors[d.target] = e.errmsg if isinstance(e, CallError) else str(e)
                self.log(f"Replication of {d.source} to {d.target} failed: {self.result.errors[d.target]}")

    # --- estimates --------------------------------------------------------------------------------

    async def estimates(self, plans: list[DatasetPlan]) -> dict[int, ByteEstimate]:
        """Exact sizes from `zfs send -nvP` (by step id) where the source ZFS has it; empty elsewhere."""
        sends = [s for d in plans for s in d.sends]
        if not sends or not self.options.exact_estimates:
            return {}
        features = await self.source.features()
        if not features.has(Feature.SEND_DRY_RUN):
            return {}
        out: dict[int, ByteEstimate] = {}
        for step in sends:
            argv = self.send_argv(step, features, dry_run=True)
            result = await self.source.runner.run(argv, check=False)
            m = _SIZE_LINE.search(result.stdout.decode(errors="replace") + "\n" +
                                  result.stderr.decode(errors="replace"))
            if result.returncode == 0 and m:
                out[id(step)] = ByteEstimate(int(m.group(1)), exact=True)
        return out

    # --- steps ------------------------------------------------------------------------------------

    async def step(self, step: Step, weights: dict[int, _StepWeight]) -> None:
        if isinstance(step, CreateParents):
            for name in step.datasets:
                if not await self.target.exists(name):
                    await self.target.create_dataset(name, parents=True)
        elif isinstance(step, DiscardResumeToken):
            (await self.target.features()).require(Feature.RECV_ABORT, "discarding a stale resume token")
            self.log(f"Discarding the partial receive into {step.dataset}: {step.reason}")
            await self.target.runner.run(recv_abort_argv(step.dataset))
        elif isinstance(step, DestroySnapshots):
            await self.destroy(step)
        elif isinstance(step, Rollback):
            await self.rollback(step)
        elif isinstance(step, Resume | FullSend | IncrementalSend):
            await self.send(step, weights[id(step)])
        elif isinstance(step, SetReadonly):
            await self.target.set_properties(step.dataset, {"readonly": "on"})
        elif isinstance(step, Mount):
            await self.mount(step)
        else:
            raise CallError(f"Unknown plan step {step!r}")

    async def rollback(self, step: Rollback, mounted: Sequence[str] = ()) -> None:
        await self.target.rollback(f"{step.dataset}@{step.snapshot}", destroy_newer=bool(step.destroys))
        if step.reason is RollbackReason.MOUNT:
            self.log(f"Rolled back {step.dataset} to {step.snapshot}: undoes what mounting {', '.join(mounted)} "
                     f"changed in it (the access time of the mountpoint directory), no data")
            return
        amount = (f"{step.written} bytes written" if step.written is not None
                  else "amount unknown: this ZFS does not report 'written'")
        self.result.rolled_back.append(f"{step.dataset}@{step.snapshot}")
        self.log(f"Rolled back {step.dataset} to {step.snapshot}, discarding the changes made on the target "
                 f"since that snapshot ({amount})")
        for name in step.destroys:
            self.result.destroyed.append(f"{step.dataset}@{name}")
            self.log(f"Destroyed {step.dataset}@{name} (rollback to {step.snapshot})")

    async def mount(self, step: Mount) -> None:
        """Mount read-only what can be mounted and is not; a mount that fails is a warning (the data did
        arrive). Read-only for zfs-fuse too, whose `readonly` property alone shows as "off" once mounted."""
        names = [step.dataset]
        if step.recursive:
            names += [d.name for d in await self.target.list_datasets(step.dataset)
                      if d.type == "filesystem" and d.name != step.dataset]
        mounted: list[str] = []
        for name in names:  # parents before children: list_datasets sorts by name
            props = await self.target.get_properties(name, ["mountpoint", "canmount", "mounted"])
            if (props["mounted"] == "yes" or props["mountpoint"] in (None, "none", "legacy")
                    or props["canmount"] in ("off", "noauto")):
                continue
            try:
                if await self.target.mount(name, readonly=True):
                    mounted.append(name)
            except CommandFailed as e:
                self.result.warnings.append(f"Could not mount {name}: {e.stderr.strip()}")
                self.log(f"Could not mount {name}: {e.stderr.strip()}")
        if mounted:
            for revert in step.reverts:
                await self.rollback(revert, mounted)

    async def destroy(self, step: DestroySnapshots) -> None:
        result = await self.target.destroy_snapshots(f"{step.dataset}@{s}" for s in step.snapshots)
        why = "retention" if step.reason is DestroyReason.RETENTION else "replication from scratch"
        for name in result.destroyed:
            self.result.destroyed.append(name)
            self.log(f"Destroyed {name} ({why})")
        for name, reason in result.skipped.items():
            self.result.warnings.append(f"Could not destroy {name}: {reason}")
            self.log(f"Could not destroy {name}: {reason}")
        if result.skipped and step.reason is DestroyReason.FROM_SCRATCH:
            raise CallError(f"Cannot replicate {step.dataset} from scratch: {', '.join(result.skipped)} "
                            f"could not be destroyed", errno.EBUSY)

    def send_argv(self, step: SendStep, features: Features, *, dry_run: bool = False) -> list[str]:
        if isinstance(step, Resume):
            features.require(Feature.SEND_RESUME, "resuming an interrupted receive")
            return resume_send_argv(step.token, dry_run=dry_run)
        options = step.send
        if options.raw:
            features.require(Feature.SEND_RAW, "sending encrypted datasets as they are")
        return send_argv(
            f"{step.source}@{step.snapshot}",
            base=step.base if isinstance(step, IncrementalSend) else None,
            intermediates=isinstance(step, IncrementalSend) and step.intermediates,
            replicate=options.replicate,
            properties=options.properties,
            raw=options.raw,
            # Efficiency flags: dropped where the sending ZFS lacks them; the stream means the same.
            large_block=options.large_block and features.has(Feature.SEND_LARGE_BLOCK),
            compressed=options.compressed and features.has(Feature.SEND_COMPRESSED),
            embedded=options.embed and features.has(Feature.SEND_EMBEDDED),
            dry_run=dry_run,
        )

    async def recv_argv(self, target: str, receive: ReceiveOptions, features: Features,
                        key_file: str | None) -> list[str]:
        overrides = dict(receive.override_properties)
        excludes = list(receive.exclude_properties)
        if receive.encryption.mode is EncryptionMode.NEW_KEY:
            features.require(Feature.ENCRYPTION, f"encrypting {target}")
            overrides.update({"encryption": "on", "keyformat": (receive.encryption.key_format or "hex").lower(),
                              "keylocation": f"file://{key_file}"})
        elif receive.encryption.mode is EncryptionMode.INHERIT:
            features.require(Feature.ENCRYPTION, f"encrypting {target}")
            excludes.append("encryption")
        no_mount = not receive.mount
        if self.excluded_after_receive(receive, features):
            # Without `recv -x` the properties arrive and are inherited right after; receiving unmounted
            # keeps a source mountpoint from ever taking effect here (the plan's `Mount` step comes later).
            excludes = [e for e in excludes if e not in receive.exclude_properties]
            no_mount = True
        if excludes:
            features.require(Feature.RECV_EXCLUDE_PROPERTY, "properties_exclude")
        if overrides:
            features.require(Feature.RECV_OVERRIDE_PROPERTY, "properties_override or target encryption")
        if no_mount:
            features.require(Feature.RECV_NO_MOUNT, "receiving without mounting")
        return recv_argv(target, resumable=features.has(Feature.RECV_RESUMABLE), force=receive.force,
                         no_mount=no_mount, exclude_properties=excludes, override_properties=overrides)

    @staticmethod
    def excluded_after_receive(receive: ReceiveOptions, features: Features) -> list[str]:
        """Properties to exclude by `zfs inherit` after the receive, on a ZFS without `recv -x`."""
        if features.has(Feature.RECV_EXCLUDE_PROPERTY):
            return []
        return list(receive.exclude_properties)

    async def apply_exclusions(self, step: SendStep, features: Features) -> None:
        excluded = self.excluded_after_receive(step.receive, features)
        if not excluded:
            return
        # A -R stream carries every dataset of the tree: the exclusion covers them all, as `recv -x` would.
        recursive = isinstance(step, FullSend | IncrementalSend) and step.send.replicate
        for prop in excluded:
            pinned = await self.target.exclude_received_property(step.target, prop, recursive=recursive)
            self.log(f"Excluded property {prop} on {step.target}{' and below' if recursive else ''} "
                     f"(inherited after receive)")
            for name in pinned:
                self.log(f"Set {prop} of {name} to the value it would inherit: this ZFS cannot inherit "
                         f"over a received value there")

    async def send(self, step: SendStep, weight: _StepWeight) -> None:
        source_features = await self.source.features()
        target_features = await self.target.features()
        send = self.send_argv(step, source_features)
        if not isinstance(step, Resume) and step.send.raw:
            # A raw stream keeps the source's encryption: only a ZFS with native encryption receives it.
            target_features.require(Feature.ENCRYPTION, f"receiving the encrypted {step.source} as it is")
        async with self.key_file(step) as key_file:
            recv = await self.recv_argv(step.target, step.receive, target_features, key_file)
            self.meter.start(weight, step.source, step.snapshot)
            self.log(self.transport.describe(send, recv))
            try:
                result = await self.transport.pipe(send, recv, on_bytes=self.meter.add,
                                                   stall_timeout=self.options.stall_timeout)
            except PipeFailed as e:
                if not (isinstance(step, IncrementalSend) and e.stage == "receive"
                        and is_modified_refusal(e.errmsg)):
                    raise
                if step.if_modified is None:
                    raise CallError(f"Target {step.target} was modified since its snapshot {step.base} and is "
                                    f"kept as it is: enable 'allow from scratch' to let the task discard the "
                                    f"changes, or roll it back yourself ({e.errmsg})", errno.EBUSY) from e
                await self.rollback(step.if_modified)
                self.meter.resend()
                self.log(self.transport.describe(send, recv))
                result = await self.transport.pipe(send, recv, on_bytes=self.meter.add,
                                                   stall_timeout=self.options.stall_timeout)
            if key_file is not None:
                await self.settle_key_location(step)
        await self.apply_exclusions(step, target_features)
        self.result.bytes_sent += result.bytes
        for name in step.arrives:
            self.result.snapshots_sent.append(f"{step.target}@{name}")
            self.result.source_snapshots_sent.append(f"{step.source}@{name}")
            self.log(f"Sent {step.source}@{name} to {step.target}")
        self.meter.finish(len(step.arrives))

    # --- encryption keys --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def key_file(self, step: SendStep):  # type: ignore[no-untyped-def]
        """For a new encryption root: the file `recv` reads the key from, 0600, written through stdin (never
        argv). A key location that is a file gets the key and keeps it (`zfs load-key` reads it from there
        later, as with zettarepl); otherwise ("$TrueNAS" keys, which this server keeps) a temporary file
        that is removed after the receive."""
        if step.receive.encryption.mode is not EncryptionMode.NEW_KEY:
            yield None
            return
        (await self.target.features()).require(Feature.ENCRYPTION, f"encrypting {step.target}")
        if not self.options.encryption_key:
            raise CallError(f"Encrypting {step.target} needs an encryption key", errno.EINVAL)
        runner = self.target.runner
        key = self.options.encryption_key.encode()
        kept = _key_file_path(step.receive.encryption.key_location)
        if kept is not None:
            # install creates missing directories and an empty 0600 file; dd then fills it
            await runner.run(["install", "-D", "-m", "600", "/dev/null", kept])
            await runner.run(["dd", f"of={kept}", "status=none"], input=key)
            yield kept
            return
        path = (await runner.run(["mktemp", "-p", _KEY_DIRECTORY, "replication-key.XXXXXXXX"])).text.strip()
        try:
            await runner.run(["dd", f"of={path}", "status=none"], input=key)
            yield path
        finally:
            with contextlib.suppress(CallError):
                await runner.run(["rm", "-f", "--", path], check=False)

    async def settle_key_location(self, step: SendStep) -> None:
        """After a receive from a temporary key file: "$TrueNAS" keys are typed in when loaded (`prompt`),
        other locations ("prompt", URLs) are set as given. A kept key file is the keylocation already."""
        location = step.receive.encryption.key_location or TRUENAS_KEY_LOCATION
        if _key_file_path(location) is not None:
            return
        value = "prompt" if location == TRUENAS_KEY_LOCATION else location
        await self.target.set_properties(step.target, {"keylocation": value})


def _key_file_path(location: str | None) -> str | None:
    """The target file a key location names ("/path" or "file:///path"); None for "$TrueNAS", "prompt", URLs."""
    if location and location.startswith("file://"):
        location = location[len("file://"):]
    return location if location and location.startswith("/") else None

async def execute(plan: Plan, transport: Transport, *, progress: ProgressCallback, log: Log,
                  options: ExecuteOptions = ExecuteOptions()) -> ExecuteResult:
    """Run every runnable dataset plan of `plan`; conflicts and non-transient failures end up in `errors`."""
    return await Executor(transport, progress, log, options).run(plan)

