"""`core.*`: options, method listing, subscriptions, jobs and bulk calls (reference §1.3, §1.6-§1.8)."""
from __future__ import annotations

import asyncio
import errno
import uuid
from typing import Any

from middlewared_plugin.errors import CallError, ValidationErrors
from middlewared_plugin.jobs.job import Job
from middlewared_plugin.jobs.manager import StoredJob
from middlewared_plugin.query.filters import filter_list
from middlewared_plugin.scheduling.schedule import describe, validate_schedule
from middlewared_plugin.services.base import ApiModel, CallContext, QueryArgs, Service, api_method


class SetOptionsArgs(ApiModel):
    options: dict[str, Any]


class GetMethodsArgs(ApiModel):
    service: str | None = None
    target: str = "WS"


class GetServicesArgs(ApiModel):
    target: str = "WS"


class SubscribeArgs(ApiModel):
    event: str


class UnsubscribeArgs(ApiModel):
    id: str


class JobIdArgs(ApiModel):
    id: int


class JobDownloadLogsArgs(ApiModel):
    id: int
    filename: str
    buffered: bool = False


class JobUpdateArgs(ApiModel):
    id: int
    data: dict[str, Any]


class DescribeScheduleArgs(ApiModel):
    schedule: dict[str, Any]


class BulkArgs(ApiModel):
    method: str
    params: list[list[Any]]
    description: str | None = None


class CoreService(Service):
    namespace = "core"

    @api_method(no_auth=True)
    async def ping(self, ctx: CallContext) -> str:
        return "pong"

    @api_method(SetOptionsArgs, no_auth=True)
    async def set_options(self, ctx: CallContext, options: dict[str, Any]) -> dict[str, bool]:
        assert ctx.session is not None
        for key in ctx.session.options:
            if key in options:
                if not isinstance(options[key], bool):
                    raise ValidationErrors([(f"options.{key}", "Input should be a valid boolean", errno.EINVAL)])
                ctx.session.options[key] = options[key]
        return dict(ctx.session.options)

    @api_method(GetMethodsArgs, no_authz_required=True)
    async def get_methods(self, ctx: CallContext, service: str | None, target: str) -> dict[str, Any]:
        methods = {}
        for name, spec in sorted(self.app.methods.items()):
            if spec.private or (service is not None and not name.startswith(f"{service}.")):
                continue
            if ctx.credentials is not None and not spec.authorized(ctx.credentials):
                continue
            methods[name] = {
                "description": spec.description,
                "cli_description": spec.description,
                "examples": {},
                "no_auth_required": spec.no_auth,
                "no_authz_required": spec.no_auth or spec.no_authz_required,
                "cli_private": False,
                "filterable": spec.filterable,
                "filterable_schema": None,
                "pass_application": False,
                "job": spec.job,
                "downloadable": False,
                "uploadable": False,
                "check_pipes": False,
                "roles": list(spec.roles),
                "accepts": _accepts_schema(spec.args_model),
                "returns": [],
            }
        return methods

    @api_method(GetServicesArgs, no_authz_required=True)
    async def get_services(self, ctx: CallContext, target: str) -> dict[str, Any]:
        from middlewared_plugin.services.base import ConfigService, CRUDService
        return {
            ns: {"config": {}, "type": "crud" if isinstance(s, CRUDService)
                 else "config" if isinstance(s, ConfigService) else "service"}
            for ns, s in self.app.services.items()
        }

    @api_method(DescribeScheduleArgs, no_authz_required=True)
    async def describe_schedule(self, ctx: CallContext, schedule: dict[str, Any]) -> str:
        """A cron schedule object in words ("At 00:00, only on Sunday"), for forms that show it as you type."""
        verrors = ValidationErrors()
        validate_schedule(verrors, "schedule", schedule)
        verrors.check()
        return describe(schedule) or ""

    # Subscriptions ---------------------------------------------------------------------------------------

    @api_method(SubscribeArgs, no_authz_required=True)  # checks the event's roles itself
    async def subscribe(self, ctx: CallContext, event: str) -> str:
        assert ctx.session is not None and ctx.credentials is not None
        if event == "*":
            allowed = ctx.credentials.is_full_admin
        elif event in self.app.event_roles:
            roles = self.app.event_roles[event]
            allowed = not roles or ctx.credentials.has_any_role(roles)
        else:
            raise CallError(f"Event {event!r} does not exist", errno.ENOENT)
        if not allowed:
            raise CallError("Not authorized", errno.EACCES)
        sub_id = str(uuid.uuid4())
        ctx.session.subscriptions[sub_id] = event
        return sub_id

    @api_method(UnsubscribeArgs, no_authz_required=True)
    async def unsubscribe(self, ctx: CallContext, id: str) -> None:
        assert ctx.session is not None
        ctx.session.subscriptions.pop(id, None)

    # Jobs ------------------------------------------------------------------------------------------------

    def _visible_job(self, ctx: CallContext, job_id: int) -> Job | StoredJob:
        job = self.app.jobs.get(job_id)
        if job is None:
            raise CallError(f"Job {job_id} does not exist", errno.ENOENT)
        # As TrueNAS: an existing job the caller may not access is EPERM (internal calls may access all).
        if ctx.credentials is not None and not job.visible_to(ctx.credentials):
            raise CallError("Not authorized", errno.EPERM)
        return job

    def _job_to_act_on(self, ctx: CallContext, job_id: int) -> Job | StoredJob:
        """A job the caller may change (abort, progress): one it started, or any job of a namespace whose
        write role it holds. Seeing a job through its `read_roles` does not let a reader stop or rewrite it."""
        job = self._visible_job(ctx, job_id)
        credentials = ctx.credentials
        if credentials is None or credentials.is_full_admin:
            return job
        if job.username is not None and job.username == credentials.username:
            return job
        service = self.app.services.get(job.method.rpartition(".")[0])
        if service is not None and service.role_prefix is not None and credentials.has_role(service.write_role):
            return job
        raise CallError("Not authorized", errno.EPERM)

    @api_method(QueryArgs, no_authz_required=True, filterable=True)  # lists only visible jobs
    async def get_jobs(self, ctx: CallContext, filters: list[Any], options: dict[str, Any]) -> Any:
        raw = bool(options.get("extra", {}).get("raw_result"))
        jobs = [
            # Raw results (secrets) only for the job's own user or a full admin, as on TrueNAS.
            j.to_json(raw_result=raw and (ctx.credentials is None or j.owned_by(ctx.credentials)))
            for j in sorted(self.app.jobs.jobs.values(), key=lambda j: j.id)
            if ctx.credentials is None or j.visible_to(ctx.credentials)
        ]
        return filter_list(jobs, filters, options)

    @api_method(JobIdArgs, no_authz_required=True)
    async def job_abort(self, ctx: CallContext, id: int) -> None:
        self._job_to_act_on(ctx, id)
        self.app.jobs.abort(id)

    @api_method(JobIdArgs, no_authz_required=True, job=True)
    async def job_wait(self, ctx: CallContext, id: int) -> Any:
        assert ctx.job is not None
        if id == ctx.job.id:
            # It would wait for itself forever, holding the caller's call slot.
            raise CallError("A job cannot wait for itself", errno.EINVAL)
        target = self._visible_job(ctx, id)
        if id > ctx.job.id:
            # Started after this call, so no job the caller could have meant; two such waits could wait for
            # each other.
            raise CallError("A job can only wait for a job started before it", errno.EINVAL)
        if isinstance(target, StoredJob):
            if target.state.value != "SUCCESS":
                raise CallError(target.doc.get("error") or "Job failed", errno.EFAULT)
            return target.doc.get("result")
        while not target.done.done():
            ctx.job.set_progress(target.progress["percent"], target.progress["description"], target.progress["extra"])
            await asyncio.wait([target.done], timeout=0.2)
        return await self.app.job_result(target)

    @api_method(JobUpdateArgs, private=True)
    async def job_update(self, ctx: CallContext, id: int, data: dict[str, Any]) -> None:
        job = self._job_to_act_on(ctx, id)
        if isinstance(job, Job) and "progress" in data:
            progress = data["progress"]
            job.set_progress(progress.get("percent"), progress.get("description"), progress.get("extra"))

    @api_method(JobDownloadLogsArgs, no_authz_required=True)
    async def job_download_logs(self, ctx: CallContext, id: int, filename: str, buffered: bool) -> str:
        job = self._visible_job(ctx, id)
        logs_path = job.logs_path if isinstance(job, Job) else job.doc.get("logs_path")
        if not logs_path:
            raise CallError("This job has no logs", errno.ENOENT)
        assert ctx.credentials is not None
        token = self.app.accounts.generate_token(
            ctx.credentials, 600, {"job": id, "filename": filename}, True, ctx.session)
        return f"/_download/{id}?auth_token={token}"

    @api_method(BulkArgs, no_authz_required=True, job=True)  # each inner call is authorized
    async def bulk(self, ctx: CallContext, method: str, params: list[list[Any]], description: str | None) -> Any:
        assert ctx.job is not None
        results = []
        for index, call_params in enumerate(params):
            entry: dict[str, Any] = {"job_id": None, "error": None, "result": None}
            try:
                outcome = await self.app.dispatch(method, call_params, session=ctx.session)
                if isinstance(outcome, Job):
                    entry["job_id"] = outcome.id
                    outcome = await self.app.job_result(outcome)
                entry["result"] = outcome
            except Exception as exc:
                entry["error"] = str(exc)
            results.append(entry)
            ctx.job.set_progress(100 * (index + 1) / max(len(params), 1), description or f"{method} {index + 1}")
        return results


def _accepts_schema(model: type[ApiModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    out = []
    for name, prop in props.items():
        out.append({**prop, "_name_": name, "_required_": name in required, **({"$defs": defs} if defs else {})})
    return out
