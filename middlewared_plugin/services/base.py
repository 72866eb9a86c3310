"""The service framework: how a namespace declares its methods, and CRUD/config services built on it.

A method is an async function decorated with `@api_method(Args, ...)`. `Args` is a pydantic model whose
fields are the positional parameters in order; its field names are the TrueNAS argument names that head
every validation attribute path (`replication_create.naming_schema`). The dispatcher (app.py) maps
params onto it, checks authentication and roles, and runs job methods through the job manager.

A CRUD service declares a table, an entry model, `extend` (computed fields), `validate` (business rules,
all collected into one ValidationErrors) and optional hooks; it gets query/get_instance/create/update/
delete with TrueNAS semantics and `<namespace>.query` events for free.
"""
from __future__ import annotations

import copy
import errno
import json
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic import ValidationError as PydanticValidationError

from middlewared_plugin.auth.credentials import Credentials
from middlewared_plugin.auth.session import Session
from middlewared_plugin.errors import CallError, InstanceNotFound, ValidationError, ValidationErrors
from middlewared_plugin.events import Event
from middlewared_plugin.protocol import ejson
from middlewared_plugin.query.filters import filter_list

if TYPE_CHECKING:
    from middlewared_plugin.app import App
    from middlewared_plugin.jobs.job import Job

REDACTED = "********"


class Private:
    """Marks a secret field: `Annotated[str, Private]`. Redacted in job arguments and for readers.

    As a method's `secret_result` (`api_method(secret_result=Private)`), the whole result is secret.
    """


@dataclass(frozen=True)
class SecretsOf:
    """Metadata of a free-form dict field: its secrets are where `model`'s `Private` fields are.

    `Annotated[dict[str, Any], SecretsOf(Entry)]` keeps the field's validation and redacts like `Entry`.
    """

    model: type[BaseModel]


class ApiModel(BaseModel):
    """Base of every argument and entry model: strict types, no unknown keys, as TrueNAS's models."""

    model_config = ConfigDict(strict=True, extra="forbid", str_max_length=1024, populate_by_name=True)


NonEmptyStr = Annotated[str, Field(min_length=1)]
#: Key material and host key lists are longer than TrueNAS's default 1024-character string limit.
LongStr = Annotated[str, Field(max_length=65536)]


class QueryOptions(ApiModel):
    extra: dict[str, Any] = {}
    order_by: list[str] = []
    select: list[str | list[Any]] = []
    count: bool = False
    get: bool = False
    offset: int = 0
    limit: int = 0
    force_sql_filters: bool = False


class IdArgs(ApiModel):
    id: int


class QueryArgs(ApiModel):
    filters: list[Any] = []
    options: QueryOptions = QueryOptions()


@dataclass
class CallContext:
    """What a method knows of its caller. `credentials` is None for internal calls (full power)."""

    app: App
    credentials: Credentials | None
    session: Session | None = None
    job: Job | None = None

    def has_role(self, role: str) -> bool:
        return self.credentials is None or self.credentials.has_role(role)


@dataclass
class MethodSpec:
    """A callable method and who may call it over the wire (`authorized`).

    Access is declared with exactly one of: `roles` (any of them), `no_auth` (anyone, even before login),
    `no_authz_required` (any logged-in user; the method itself limits what each user sees or touches) or
    `private` (an internal helper: full admins only, as on TrueNAS). A method that declares none of them is
    for full admins only too, so forgetting a declaration never opens a method to every user.
    """

    name: str
    func: Callable[..., Awaitable[Any]]
    args_model: type[BaseModel]
    roles: tuple[str, ...] = ()
    no_auth: bool = False
    no_authz_required: bool = False
    private: bool = False
    job: bool = False
    lock: str | Callable[[list[Any]], str] | None = None
    lock_queue_size: int = 5
    logs: bool = False
    read_roles: tuple[str, ...] = ()
    description: str | None = None
    filterable: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: Where the result's secrets are, as an annotation: `Private` (all of it), a model with `Private` fields,
    #: `list[Model] | Model` ... Job records (stored, events, core.get_jobs) show them as "********".
    secret_result: Any = None

    def __post_init__(self) -> None:
        declared = [name for name, value in (("roles", self.roles), ("no_auth", self.no_auth),
                                             ("no_authz_required", self.no_authz_required),
                                             ("private", self.private)) if value]
        if len(declared) > 1:
            raise ValueError(f"{self.name}: declare only one of roles, no_auth, no_authz_required, private "
                             f"(found {', '.join(declared)})")

    def authorized(self, credentials: Credentials | None) -> bool:
        """Whether a session with `credentials` (None: not logged in) may call this method."""
        if self.no_auth:
            return True
        if credentials is None:
            return False
        if self.no_authz_required:
            return True
        if self.roles:
            return credentials.has_any_role(self.roles)
        # Private helpers and methods without a declaration.
        return credentials.is_full_admin

    @property
    def arg_names(self) -> list[str]:
        return list(self.args_model.model_fields)

    def parse_params(self, params: list[Any]) -> list[Any]:
        """Positional params -> validated python values (nested models as dicts), defaults filled.

        Extended-JSON values (`{"$date": ms}`...) are decoded here, so one that cannot be decoded is an invalid
        argument like any other, with its path.
        """
        names = self.arg_names
        if len(params) > len(names):
            raise ValidationErrors([("", f"Too many arguments (expected {len(names)}, found {len(params)})", 22)])
        arguments = {}
        for name, value in zip(names, params, strict=False):
            try:
                arguments[name] = ejson.decode(value)
            except ejson.DecodeError as exc:
                raise ValidationErrors([(".".join(map(str, [name, *exc.path])), str(exc), errno.EINVAL)]) from None
        try:
            parsed = self.args_model.model_validate(arguments)
        except PydanticValidationError as exc:
            raise pydantic_to_validation_errors(exc) from None
        except CallError:
            raise
        except Exception as exc:
            # Pydantic passes on what a validator raises other than ValueError/AssertionError: still a bad
            # argument, not a server error (the cause stays in the trace for logged-in callers).
            raise ValidationErrors([("", "Invalid value", errno.EINVAL)]) from exc
        return [_plain(getattr(parsed, name)) for name in names]

    def redact_arguments(self, arguments: list[Any]) -> list[Any]:
        names = self.arg_names
        return [
            redact_by_annotation(self.args_model.model_fields[names[i]].annotation,
                                 self.args_model.model_fields[names[i]].metadata, value)
            if i < len(names) else value
            for i, value in enumerate(arguments)
        ]

    def redact_result(self, result: Any) -> Any:
        return result if self.secret_result is None else redact_by_annotation(self.secret_result, [], result)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def pydantic_to_validation_errors(exc: PydanticValidationError, prefix: str | None = None) -> ValidationErrors:
    verrors = ValidationErrors()
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if prefix is not None:
            loc = [prefix, *loc]
        verrors.add(".".join(loc), error["msg"])
    return verrors


def redact_by_annotation(annotation: Any, metadata: list[Any], value: Any) -> Any:
    """Replace values of `Private` fields with the TrueNAS placeholder, walking nested models, lists and unions.

    A union member is applied when it may describe the value (for models: every `Literal` field present
    agrees), so a discriminated union is redacted by the member the value is an instance of.
    """
    while get_origin(annotation) is Annotated:
        annotation, *more = get_args(annotation)
        metadata = [*metadata, *more]
    if annotation is Private or Private in metadata:
        return REDACTED if value is not None else None
    shaped = next((m.model for m in metadata if isinstance(m, SecretsOf)), None)
    if shaped is not None:
        return redact_by_annotation(shaped, [], value)
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        for member in get_args(annotation):
            if _may_describe(member, value):
                value = redact_by_annotation(member, [], value)
        return value
    if origin is list and isinstance(value, list):
        item = (get_args(annotation) or (Any,))[0]
        return [redact_by_annotation(item, [], v) for v in value]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(value, dict):
        out = dict(value)
        for name, info in annotation.model_fields.items():
            key = info.alias or name
            if key in out:
                out[key] = redact_by_annotation(info.annotation, info.metadata, out[key])
        return out
    return value


def _may_describe(annotation: Any, value: Any) -> bool:
    bare = get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation
    if not (isinstance(bare, type) and issubclass(bare, BaseModel)):
        return True
    if not isinstance(value, dict):
        return False
    for name, info in bare.model_fields.items():
        key = info.alias or name
        if get_origin(info.annotation) is Literal and key in value and value[key] not in get_args(info.annotation):
            return False
    return True


def api_method(
    args: type[BaseModel] | None = None,
    *,
    roles: tuple[str, ...] | list[str] = (),
    no_auth: bool = False,
    no_authz_required: bool = False,
    private: bool = False,
    job: bool = False,
    lock: str | Callable[[list[Any]], str] | None = None,
    lock_queue_size: int = 5,
    logs: bool = False,
    read_roles: tuple[str, ...] | list[str] = (),
    filterable: bool = False,
    secret_result: Any = None,
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Declare a method. The function takes (self, ctx, *args) and, for jobs, finds ctx.job set.

    Who may call it: `roles`, `no_auth`, `no_authz_required` or `private`, see MethodSpec; none of them
    means full admins only.
    """

    def decorate(func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        func._api_spec = dict(  # type: ignore[attr-defined]
            args_model=args or create_model(f"{func.__name__}_args", __base__=ApiModel),
            roles=tuple(roles), no_auth=no_auth, no_authz_required=no_authz_required, private=private, job=job,
            lock=lock,
            lock_queue_size=lock_queue_size, logs=logs, read_roles=tuple(read_roles),
            description=(func.__doc__ or "").strip() or None, filterable=filterable, secret_result=secret_result,
        )
        return func

    return decorate


class Service:
    """A namespace of methods. Subclasses set `namespace` and decorate methods with `@api_method`."""

    namespace: ClassVar[str]
    #: TrueNAS role prefix (`REPLICATION_TASK`): READ/WRITE roles and event access derive from it.
    role_prefix: ClassVar[str | None] = None

    def __init__(self, app: App):
        self.app = app

    @property
    def read_role(self) -> str:
        return f"{self.role_prefix}_READ"

    @property
    def write_role(self) -> str:
        return f"{self.role_prefix}_WRITE"

    async def setup(self) -> None:
        """Called once at start, after every service is registered."""

    async def shutdown(self) -> None:
        """Called once at stop."""

    def method_specs(self) -> list[MethodSpec]:
        specs = []
        for attr in dir(type(self)):
            func = getattr(type(self), attr, None)
            spec = getattr(func, "_api_spec", None)
            if spec is not None:
                specs.append(MethodSpec(name=f"{self.namespace}.{attr}", func=getattr(self, attr), **spec))
        return specs

    def event_roles(self) -> dict[str, tuple[str, ...]]:
        """Events of this namespace and the roles needed to subscribe."""
        return {}


ModelT = TypeVar("ModelT", bound=BaseModel)


class CRUDService(Service):
    """Create/read/update/delete over a table of JSON documents, with TrueNAS semantics."""

    table: ClassVar[str]
    #: Name in "<entry_name> <id> does not exist".
    entry_name: ClassVar[str]
    #: The create input model: defaults here are TrueNAS's defaults.
    entry_model: ClassVar[type[BaseModel]]
    create_arg: ClassVar[str] = "data"
    update_arg: ClassVar[str] = "data"
    #: Schema names used by business validation (TrueNAS sometimes differs from the argument names).
    create_schema: ClassVar[str | None] = None
    update_schema: ClassVar[str | None] = None
    #: Top-level keys whose values are encrypted at rest.
    encrypted_fields: ClassVar[tuple[str, ...]] = ()
    #: Top-level keys shown as "********" to callers without the write role.
    secret_fields: ClassVar[tuple[str, ...]] = ()

    @property
    def event_name(self) -> str:
        return f"{self.namespace}.query"

    def event_roles(self) -> dict[str, tuple[str, ...]]:
        return {self.event_name: (self.read_role,)}

    # Hooks ---------------------------------------------------------------------------------------------

    async def extend(self, ctx: CallContext, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add computed fields (state, nested objects) to stored entries. Called for whole lists at once."""
        return entries

    async def validate(
        self, ctx: CallContext, verrors: ValidationErrors, schema: str, data: dict[str, Any],
        old: dict[str, Any] | None,
    ) -> None:
        """Business rules: add every problem to `verrors` (attribute `<schema>.<field>`)."""

    def compress(self, entry: dict[str, Any]) -> dict[str, Any]:
        """An extended entry back in create-input form (for the update merge)."""
        fields = self.entry_model.model_fields
        keys = {info.alias or name for name, info in fields.items()}
        return {k: copy.deepcopy(v) for k, v in entry.items() if k in keys}

    async def before_save(self, ctx: CallContext, data: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        """Turn validated input into the stored document (generate, normalise)."""
        return data

    async def after_create(self, ctx: CallContext, entry: dict[str, Any]) -> None: ...

    async def after_update(self, ctx: CallContext, old: dict[str, Any], entry: dict[str, Any]) -> None: ...

    async def before_delete(self, ctx: CallContext, entry: dict[str, Any], options: dict[str, Any]) -> None: ...

    async def after_delete(self, ctx: CallContext, entry: dict[str, Any]) -> None: ...

    # Storage -------------------------------------------------------------------------------------------

    def _encode(self, doc: dict[str, Any]) -> dict[str, Any]:
        out = dict(doc)
        out.pop("id", None)
        for key in self.encrypted_fields:
            if key in out and out[key] is not None:
                out[key] = self.app.secrets.encrypt(json.dumps(out[key]))
        return out

    def _decode(self, id: int, doc: dict[str, Any]) -> dict[str, Any]:
        out = {"id": id, **doc}
        for key in self.encrypted_fields:
            if isinstance(out.get(key), str):
                out[key] = json.loads(self.app.secrets.decrypt(out[key]))
        return out

    async def stored(self) -> list[dict[str, Any]]:
        """Every stored entry, decrypted, not extended."""
        return [self._decode(i, d) for i, d in await self.app.store.all(self.table)]

    async def stored_one(self, id: int) -> dict[str, Any] | None:
        doc = await self.app.store.get(self.table, id)
        return None if doc is None else self._decode(id, doc)

    async def save(self, id: int, doc: dict[str, Any]) -> None:
        """Write a stored document as it is (internal updates that bypass validation, e.g. cascades)."""
        await self.app.store.update(self.table, id, self._encode(doc))

    def redact(self, credentials: Credentials | None, entry: dict[str, Any]) -> dict[str, Any]:
        if credentials is None or credentials.has_role(self.write_role) or not self.secret_fields:
            return entry
        return {k: (REDACTED if k in self.secret_fields and v is not None else v) for k, v in entry.items()}

    # Public methods ------------------------------------------------------------------------------------

    async def entries(self, ctx: CallContext, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Extended entries as `ctx`'s caller may see them. `extra` is the query's `options.extra`: what a
        service computes only when asked (`replication`'s `check_dataset_encryption_keys`)."""
        entries = await self.extend(ctx, await self.stored())
        return [self.redact(ctx.credentials, e) for e in entries]

    async def query(self, ctx: CallContext, filters: list[Any], options: dict[str, Any]) -> Any:
        return filter_list(await self.entries(ctx, options.get("extra")), filters, options)

    async def get_instance(self, ctx: CallContext, id: int, options: dict[str, Any] | None = None) -> dict[str, Any]:
        found = filter_list(await self.entries(ctx, (options or {}).get("extra")), [["id", "=", id]],
                            {**(options or {}), "get": False})
        if not found:
            raise InstanceNotFound(f"{self.entry_name} {id} does not exist")
        return found[0]

    def _validate_model(self, arg: str, data: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.entry_model.model_validate(data).model_dump(by_alias=True)
        except PydanticValidationError as exc:
            raise pydantic_to_validation_errors(exc, arg) from None

    async def create(self, ctx: CallContext, data: dict[str, Any]) -> dict[str, Any]:
        verrors = ValidationErrors()
        await self.validate(ctx, verrors, self.create_schema or self.create_arg, data, None)
        verrors.check()
        doc = await self.before_save(ctx, data, None)
        id = await self.app.store.insert(self.table, self._encode(doc))
        try:
            entry = await self.get_instance(CallContext(self.app, None), id)
            await self.after_create(ctx, entry)
        except BaseException:
            # A failed create leaves no row.
            await self.app.store.delete(self.table, id)
            raise
        self.publish("ADDED", id, entry)
        return self.redact(ctx.credentials, entry)

    async def update(self, ctx: CallContext, id: int, data: dict[str, Any]) -> dict[str, Any]:
        old = await self.get_instance(CallContext(self.app, None), id)
        if not isinstance(data, dict):
            raise ValidationErrors([(self.update_arg, "Input should be a valid dictionary", 22)])
        merged = self._validate_model(self.update_arg, {**self.compress(old), **data})
        verrors = ValidationErrors()
        await self.validate(ctx, verrors, self.update_schema or self.update_arg, merged, old)
        verrors.check()
        doc = await self.before_save(ctx, merged, old)
        await self.app.store.update(self.table, id, self._encode(doc))
        entry = await self.get_instance(CallContext(self.app, None), id)
        await self.after_update(ctx, old, entry)
        self.publish("CHANGED", id, entry)
        return self.redact(ctx.credentials, entry)

    async def delete(self, ctx: CallContext, id: int, options: dict[str, Any] | None = None) -> bool:
        entry = await self.get_instance(CallContext(self.app, None), id)
        await self.before_delete(ctx, entry, options or {})
        await self.app.store.delete(self.table, id)
        await self.after_delete(ctx, entry)
        self.publish("REMOVED", id, None)
        return True

    def publish(self, kind: str, id: int, fields: dict[str, Any] | None) -> None:
        self.app.bus.publish(Event(
            self.event_name, kind, id, fields,  # type: ignore[arg-type]
            redact=(lambda creds, f: self.redact(creds, f)) if fields is not None else None,
        ))

    async def save_fields(self, id: int, **fields: Any) -> None:
        """Change stored fields without validation (cascades, attachments) and send the changed entry."""
        doc = await self.stored_one(id)
        if doc is not None:
            await self.save(id, {**doc, **fields})
            await self.publish_changed(id)

    async def publish_changed(self, id: int) -> None:
        """Send the full entry after an internal change (state, cascade)."""
        try:
            entry = await self.get_instance(CallContext(self.app, None), id)
        except InstanceNotFound:
            return
        self.publish("CHANGED", id, entry)

    def method_specs(self) -> list[MethodSpec]:
        specs = {s.name: s for s in super().method_specs()}
        ns = self.namespace
        model = self.entry_model
        read, write = (self.read_role,), (self.write_role,)
        # The secret fields, as job records must redact them: whole values, as readers see them.
        secrets = create_model(f"{ns}_secrets", **{k: (Annotated[Any, Private], None) for k in self.secret_fields})
        generated = [
            MethodSpec(f"{ns}.query", self._api_query, QueryArgs, roles=read, filterable=True),
            MethodSpec(f"{ns}.get_instance", self._api_get_instance,
                       create_model(f"{ns}_get_instance", __base__=ApiModel, id=(int, ...),
                                    options=(QueryOptions, QueryOptions())), roles=read),
            MethodSpec(f"{ns}.create", self._api_create,
                       create_model(f"{ns}_create", __base__=ApiModel, **{self.create_arg: (model, ...)}),
                       roles=write),
            MethodSpec(f"{ns}.update", self._api_update,
                       create_model(f"{ns}_update", __base__=ApiModel, id=(int, ...),
                                    **{self.update_arg: (Annotated[dict[str, Any], SecretsOf(secrets)], {})}),
                       roles=write),
            MethodSpec(f"{ns}.delete", self._api_delete,
                       create_model(f"{ns}_delete", __base__=ApiModel, id=(int, ...)), roles=write),
        ]
        for spec in generated:
            specs.setdefault(spec.name, spec)
        if self.secret_fields:
            # Entries (one, or a list from query) are what these return, generated or overridden.
            for verb in ("query", "get_instance", "create", "update"):
                spec = specs[f"{ns}.{verb}"]
                spec.secret_result = spec.secret_result or list[secrets] | secrets  # type: ignore[valid-type]
        return list(specs.values())

    async def _api_query(self, ctx: CallContext, filters: list[Any], options: dict[str, Any]) -> Any:
        return await self.query(ctx, filters, options)

    async def _api_get_instance(self, ctx: CallContext, id: int, options: dict[str, Any]) -> Any:
        return await self.get_instance(ctx, id, options)

    async def _api_create(self, ctx: CallContext, data: dict[str, Any]) -> Any:
        return await self.create(ctx, data)

    async def _api_update(self, ctx: CallContext, id: int, data: dict[str, Any]) -> Any:
        return await self.update(ctx, id, data)

    async def _api_delete(self, ctx: CallContext, id: int) -> Any:
        return await self.delete(ctx, id)


class ConfigService(Service):
    """One row of settings: `<ns>.config()` and `<ns>.update(data)`. Emits no events (as TrueNAS)."""

    table: ClassVar[str]
    entry_model: ClassVar[type[BaseModel]]
    update_arg: ClassVar[str] = "data"

    async def config(self, ctx: CallContext | None = None) -> dict[str, Any]:
        stored = await self.app.store.get(self.table, 1) or {}
        defaults = self.entry_model.model_validate({}).model_dump(by_alias=True)
        return {"id": 1, **defaults, **stored}

    async def validate(self, ctx: CallContext, verrors: ValidationErrors, data: dict[str, Any]) -> None: ...

    async def after_update(self, ctx: CallContext, config: dict[str, Any]) -> None: ...

    async def update(self, ctx: CallContext, data: dict[str, Any]) -> dict[str, Any]:
        current = await self.config()
        current.pop("id")
        try:
            merged = self.entry_model.model_validate({**current, **data}).model_dump(by_alias=True)
        except PydanticValidationError as exc:
            raise pydantic_to_validation_errors(exc, self.update_arg) from None
        verrors = ValidationErrors()
        await self.validate(ctx, verrors, merged)
        verrors.check()
        await self.app.store.upsert(self.table, 1, merged)
        config = await self.config()
        await self.after_update(ctx, config)
        return config

    def method_specs(self) -> list[MethodSpec]:
        specs = {s.name: s for s in super().method_specs()}
        ns = self.namespace
        read = (f"{self.role_prefix}_READ",)
        write = (f"{self.role_prefix}_WRITE",)
        for spec in (
            MethodSpec(f"{ns}.config", self._api_config, create_model(f"{ns}_config", __base__=ApiModel), roles=read),
            MethodSpec(f"{ns}.update", self._api_update,
                       create_model(f"{ns}_update", __base__=ApiModel, **{self.update_arg: (dict[str, Any], {})}),
                       roles=write),
        ):
            specs.setdefault(spec.name, spec)
        return list(specs.values())

    async def _api_config(self, ctx: CallContext) -> Any:
        return await self.config(ctx)

    async def _api_update(self, ctx: CallContext, data: dict[str, Any]) -> Any:
        return await self.update(ctx, data)


__all__ = [
    "REDACTED", "ApiModel", "CRUDService", "CallContext", "ConfigService", "MethodSpec", "NonEmptyStr", "Private",
    "QueryArgs", "QueryOptions", "SecretsOf", "Service", "ValidationError", "ValidationErrors", "api_method",
]
