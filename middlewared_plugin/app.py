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
from middlewared_plugin.services.base import CallContext, MethodSpec, Service
from middlewared_plugin.settings import Settings
from middlewared_plugin.store.db import Store
from middlewared_plugin.store.secrets import SecretBox

logger = logging.getLogger(__name__)


class MethodNotFound(CallError):
    def __init__(self, name: str):
        super().__init__(f"Method {name!r} does not exist", ENOMETHOD)


class App:
    def __init__(self, settings: Settings, service_classes: Iterable[type[Service]] | None = None):
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        (settings.data_dir / "jobs").mkdir(exist_ok=True)
        self.secrets = SecretBox(settings.data_dir / "secret.key")
        self.store = Store(settings.data_dir / "middlewared.sqlite")
        self.bus = EventBus()
        self.accounts = Accounts(self.store)
        self.login_limiter = FailedLoginLimiter()
        self.jobs = JobManager(self.store, self.bus, settings.data_dir / "jobs")
        self.jobs.redact_arguments = self._redact_job_arguments
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
        """The credentials the call runs with; raises when the session may not call the method."""
        if session is None:
            return None
        if spec.no_auth:
            return session.credentials
        if session.credentials is None:
            raise CallError("Not authenticated", ENOTAUTHENTICATED)
        if spec.roles and not session.credentials.has_any_role(spec.roles):
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
            raise job.raised
        return job.result

    def _redact_job_arguments(self, method: str, arguments: list[Any]) -> list[Any]:
        spec = self.methods.get(method)
        if spec is None:
            return arguments
        if method == "core.bulk" and len(arguments) >= 2 and isinstance(arguments[1], list):
            # Each inner call is redacted by the inner method's own argument model.
            inner = self.methods.get(arguments[0])
            if inner is not None:
                arguments = [arguments[0], [inner.redact_arguments(p) for p in arguments[1]], *arguments[2:]]
        return spec.redact_arguments(arguments)
