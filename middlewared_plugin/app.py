"""The application: owns the store, event bus, job manager and services, and the one dispatch path.

Every call, from a WebSocket client or from inside the server, goes through `dispatch`: method lookup,
authentication and roles, argument validation, then a plain call or a job.
"""
from __future__ import annotations

import errno
import logging
from collections.abc import Iterable
from typing import Any

from middlewared_plugin.auth.accounts import Accounts
from middlewared_plugin.auth.credentials import Credentials
from middlewared_plugin.auth.ratelimit import FailedLoginLimiter
from middlewared_plugin.auth.session import Session
from middlewared_plugin.errors import ENOMETHOD, ENOTAUTHENTICATED, CallError
from middlewared_plugin.events import EventBus
from middlewared_plugin.jobs.job import Job
from middlewared_plugin.jobs.manager import JobManager
from middlewared_plugin.remote.runner import LocalRunner, Runner
from middlewared_plugin.remote.ssh import runner_for_credentials
from middlewared_plugin.scheduling.scheduler import Scheduler
from middlewared_plugin.services.base import REDACTED, CallContext, MethodSpec, Service
from middlewared_plugin.settings import Settings
from middlewared_plugin.store import datadir
from middlewared_plugin.store.db import Store
from middlewared_plugin.store.secrets import SecretBox

logger = logging.getLogger(__name__)


class MethodNotFound(CallError):
    def __init__(self, name: str):
        super().__init__(f"Method {name!r} does not exist", ENOMETHOD)


class App:
    def __init__(self, settings: Settings, service_classes: Iterable[type[Service]] | None = None):
        self.settings = settings
        datadir.prepare(settings.data_dir)
        (settings.data_dir / "jobs").mkdir(mode=datadir.DIR_MODE, exist_ok=True)
        self.secrets = SecretBox(settings.data_dir / "secret.key")
        self.store = Store(settings.data_dir / "middlewared.sqlite")
        self.bus = EventBus()
        self.accounts = Accounts(self.store)
        self.login_limiter = FailedLoginLimiter()
        self.jobs = JobManager(self.store, self.bus, settings.data_dir / "jobs")
        self.jobs.redact_arguments = self._redact_job_arguments
        self.jobs.redact_result = self._redact_job_result
        self.local_runner: Runner = LocalRunner()
        #: Runs this server's own zfs/zpool commands: here, or on the host named by settings.local_zfs_ssh.
        self.zfs_runner: Runner = (
            runner_for_credentials(settings.local_zfs_ssh) if settings.local_zfs_ssh else self.local_runner
        )
        #: The minute scheduler services add their handlers to (in `setup`); tests step it with `tick`.
        self.scheduler = Scheduler()
        self.services: dict[str, Service] = {}
        self.methods: dict[str, MethodSpec] = {}
        self.event_roles: dict[str, tuple[str, ...]] = {"core.get_jobs": ()}
        if service_classes is None:
            from middlewared_plugin.services import ALL_SERVICES
            service_classes = ALL_SERVICES
        for cls in service_classes:
            self.register(cls(self))

    def register(self, service: Service) -> None:
        self.services[service.namespace] = service
        for spec in service.method_specs():
            self.methods[spec.name] = spec
        self.event_roles.update(service.event_roles())

    def service(self, namespace: str) -> Any:
        return self.services[namespace]

    async def start(self) -> None:
        await self.store.open()
        await self.jobs.load_history()
        for service in self.services.values():
            await service.setup()
        if self.settings.scheduler_enabled:
            self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()
        for service in reversed(list(self.services.values())):
            try:
                await service.shutdown()
            except Exception:
                logger.exception("Service %s failed to shut down", service.namespace)
        await self.jobs.shutdown()
        await self.zfs_runner.close()
        await self.local_runner.close()
        await self.store.close()

    # Dispatch ------------------------------------------------------------------------------------------

    def spec(self, name: str) -> MethodSpec:
        spec = self.methods.get(name)
        if spec is None:
            raise MethodNotFound(name)
        return spec

    def authorize(self, spec: MethodSpec, session: Session | None) -> Credentials | None:
        """The credentials the call runs with; raises when the session may not call the method.

        The rule itself is `MethodSpec.authorized`: private helpers and methods without a role declaration
        are for full admins only.
        """
        if session is None:
            return None
        if spec.no_auth:
            return session.credentials
        if session.credentials is None:
            raise CallError("Not authenticated", ENOTAUTHENTICATED)
        if not spec.authorized(session.credentials):
            raise CallError("Not authorized", errno.EACCES)
        return session.credentials

    async def dispatch(
        self, name: str, params: list[Any], *, session: Session | None = None, message_id: Any = None,
    ) -> Any | Job:
        """Run a method for a session (None: internal, full power). Job methods return the Job."""
        spec = self.spec(name)
        credentials = self.authorize(spec, session)
        args = spec.parse_params(params)
        ctx = CallContext(self, credentials, session)
        if not spec.job:
            return await spec.func(ctx, *args)
        return self.submit_job(spec, ctx, args, message_id=message_id)

    def submit_job(self, spec: MethodSpec, ctx: CallContext, args: list[Any], *, message_id: Any = None) -> Job:
        async def run(job: Job) -> Any:
            return await spec.func(CallContext(self, ctx.credentials, ctx.session, job), *args)

        lock = spec.lock(args) if callable(spec.lock) else spec.lock
        return self.jobs.submit(
            spec.name, args, run, credentials=ctx.credentials, message_id=message_id, lock=lock,
            lock_queue_size=spec.lock_queue_size, logs=spec.logs, read_roles=spec.read_roles,
        )

    async def call(self, name: str, *params: Any) -> Any:
        """Internal call with full power; a job method is awaited and its result returned."""
        result = await self.dispatch(name, list(params))
        if isinstance(result, Job):
            return await self.job_result(result)
        return result

    async def job_result(self, job: Job) -> Any:
        """Wait for a job; return its result or raise what it raised."""
        await self.jobs.wait(job)
        if job.raised is not None:
            # A copy: raising the job's own exception would chain this waiter's frames, and through their
            # locals its whole connection, onto the traceback the job keeps for as long as it is remembered.
            raise _copy_exception(job.raised)
        return job.result

    # Job records: what the jobs table, core.get_jobs and its events show of a job's arguments and result.

    def _redact_job_arguments(self, method: str, arguments: list[Any]) -> list[Any]:
        spec = self.methods.get(method)
        if spec is None:
            # A method we do not know (a misspelt bulk call) may still have been given secrets.
            return [REDACTED for _ in arguments]
        if method == "core.bulk" and len(arguments) >= 2 and isinstance(arguments[1], list):
            # Each inner call is redacted as a job of the inner method would be (a bulk of bulks too).
            calls = [self._redact_job_arguments(arguments[0], p) if isinstance(p, list) else p for p in arguments[1]]
            arguments = [arguments[0], calls, *arguments[2:]]
        return spec.redact_arguments(arguments)

    def _redact_job_result(self, method: str, arguments: list[Any], result: Any) -> Any:
        """By the method's `secret_result`, and through the calls a wrapping job ran for its caller."""
        if method == "core.bulk" and len(arguments) >= 2 and isinstance(result, list):
            return [
                {**entry, "result": self._redact_job_result(arguments[0], params, entry.get("result"))}
                for entry, params in zip(result, arguments[1], strict=False)
            ]
        if method == "core.job_wait" and arguments:
            # The waited-for job's own record already shows its result redacted.
            target = self.jobs.get(arguments[0])
            return target.to_json()["result"] if target is not None else REDACTED
        spec = self.methods.get(method)
        if spec is None:
            return None if result is None else REDACTED
        return spec.redact_result(result)


def _copy_exception(exc: BaseException) -> BaseException:
    """A new exception of `exc`'s class with its arguments, attributes, chained exceptions and traceback so far.

    Built without `__init__`, whose parameters are not `args` for many classes (ours among them).
    """
    cls = type(exc)
    try:
        copy = cls.__new__(cls, *exc.args)
    except TypeError:
        # A class whose __new__ takes other arguments too (pydantic's ValidationError): raised as it is.
        return exc
    copy.__dict__.update(exc.__dict__)
    copy.__cause__, copy.__context__ = exc.__cause__, exc.__context__
    copy.__suppress_context__ = exc.__suppress_context__
    return copy.with_traceback(exc.__traceback__)
