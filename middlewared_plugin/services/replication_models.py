"""Argument models of `replication.*` (reference §2.1.1): TrueNAS's fields, defaults and argument-level messages.

Strict and closed like every ApiModel, so clients get TrueNAS's own texts for bad input (`Field required`,
`Input should be 'PUSH' or 'PULL'`, `Value error, %Y must be present in snapshot naming schema`, ...).
Business rules that need other tasks, credentials or the caller live in `replication_validation.py`.
"""
from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Annotated, Any, Literal, TypeVar

from croniter import croniter
from pydantic import AfterValidator, Field, create_model, model_validator
from pydantic_core import PydanticCustomError

from middlewared_plugin.scheduling.schedule import Schedule
from middlewared_plugin.services.base import ApiModel, NonEmptyStr, Private
from middlewared_plugin.services.common import DatasetName, SnapshotNameSchema, SshUsername
from middlewared_plugin.services.keychain import PairingPublicKey

T = TypeVar("T")

Transport = Literal["SSH", "SSH+NETCAT", "LOCAL"]
Direction = Literal["PUSH", "PULL"]
LifetimeUnit = Literal["HOUR", "DAY", "WEEK", "MONTH", "YEAR"]
TcpPort = Annotated[int, Field(ge=1, le=65535)]
PositiveInt = Annotated[int, Field(ge=1)]
TimeString = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]


def _unique(items: list[T]) -> list[T]:
    # Pairwise equality, not a set: items need not be hashable.
    for i, item in enumerate(items):
        if item in items[i + 1:]:
            raise PydanticCustomError("unique_list", "List must be unique")
    return items


UniqueList = Annotated[list[T], AfterValidator(_unique)]


def _hhmm(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


class CronModel(ApiModel):
    """A plain cron schedule (`lifetimes[].schedule`): each field a cron item or comma list."""

    minute: str = "*"
    hour: str = "*"
    dom: str = "*"
    month: str = "*"
    dow: str = "*"

    def iterator(self, start: datetime) -> croniter:
        fields = {k: getattr(self, k) for k in ("minute", "hour", "dom", "month", "dow")}
        return croniter(Schedule.from_api(fields).cron, start)

    @model_validator(mode="after")
    def _cron_syntax(self) -> CronModel:
        try:
            self.iterator(datetime(2000, 1, 1))
        except Exception as exc:
            raise ValueError(f"Please ensure fields match cron syntax - {exc}") from None
        return self


class TimeCronModel(CronModel):
    """A cron schedule with a daily [begin, end] window."""

    begin: TimeString = "00:00"
    end: TimeString = "23:59"

    @model_validator(mode="after")
    def _window(self) -> TimeCronModel:
        begin, end = _hhmm(self.begin), _hhmm(self.end)
        # TrueNAS asserts these two, so clients see "Assertion failed, ...".
        if begin > end:
            raise AssertionError("Begin time should be less than or equal to end time")
        # 1440 consecutive firings cover every minute of a day the cron can fire in.
        iterator = self.iterator(datetime(2000, 1, 1) - timedelta(minutes=1))
        try:
            for _ in range(24 * 60):
                if begin <= iterator.get_next(datetime).time() <= end:
                    return self
        except Exception as exc:  # croniter gives up on crons that (almost) never fire
            raise AssertionError("Specified schedule does not match specified time interval") from exc
        raise AssertionError("Specified schedule does not match specified time interval")


class ReplicationTimeCronModel(TimeCronModel):
    minute: str = "00"


class ReplicationLifetime(ApiModel):
    schedule: CronModel
    lifetime_value: PositiveInt
    lifetime_unit: LifetimeUnit


class ReplicationCreate(ApiModel):
    """`replication_create`; also the stored shape (ids for credentials and snapshot tasks)."""

    name: NonEmptyStr
    direction: Direction
    transport: Transport
    ssh_credentials: int | None = None
    netcat_active_side: Literal["LOCAL", "REMOTE"] | None = None
    netcat_active_side_listen_address: str | None = None
    netcat_active_side_port_min: TcpPort | None = None
    netcat_active_side_port_max: TcpPort | None = None
    netcat_passive_side_connect_address: str | None = None
    sudo: bool = False
    source_datasets: Annotated[list[DatasetName], Field(min_length=1)]
    target_dataset: DatasetName
    recursive: bool
    exclude: list[str] = []
    properties: bool = True
    properties_exclude: list[NonEmptyStr] = []
    properties_override: dict[str, str] = {}
    replicate: bool = False
    encryption: bool = False
    encryption_inherit: bool | None = None
    encryption_key: Annotated[str | None, Private] = None
    encryption_key_format: Literal["HEX", "PASSPHRASE"] | None = None
    encryption_key_location: str | None = None
    periodic_snapshot_tasks: UniqueList[int] = []
    naming_schema: list[SnapshotNameSchema] = []
    also_include_naming_schema: list[SnapshotNameSchema] = []
    name_regex: NonEmptyStr | None = None
    auto: bool
    schedule: ReplicationTimeCronModel | None = None
    restrict_schedule: ReplicationTimeCronModel | None = None
    only_matching_schedule: bool = False
    allow_from_scratch: bool = False
    readonly: Literal["SET", "REQUIRE", "IGNORE"] = "SET"
    hold_pending_snapshots: bool = False
    retention_policy: Literal["SOURCE", "CUSTOM", "NONE"]
    lifetime_value: PositiveInt | None = None
    lifetime_unit: LifetimeUnit | None = None
    lifetimes: list[ReplicationLifetime] = []
    compression: Literal["LZ4", "PIGZ", "PLZIP"] | None = None
    speed_limit: PositiveInt | None = None
    large_block: bool = True
    embed: bool = False
    compressed: bool = True
    retries: PositiveInt = 5
    logging_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    enabled: bool = True


class ReplicationRestore(ApiModel):
    name: NonEmptyStr
    target_dataset: DatasetName


class RestoreArgs(ApiModel):
    id: int
    replication_restore: ReplicationRestore


class ListDatasetsArgs(ApiModel):
    transport: Transport
    ssh_credentials: int | None = None


class CreateDatasetArgs(ApiModel):
    dataset: DatasetName
    transport: Transport
    ssh_credentials: int | None = None


class CountEligibleManualSnapshots(ApiModel):
    datasets: Annotated[list[DatasetName], Field(min_length=1)]
    naming_schema: list[SnapshotNameSchema] = []
    name_regex: NonEmptyStr | None = None
    transport: Transport
    ssh_credentials: int | None = None


class CountEligibleManualSnapshotsArgs(ApiModel):
    count_eligible_manual_snapshots: CountEligibleManualSnapshots


class TargetUnmatchedSnapshotsArgs(ApiModel):
    direction: Direction
    source_datasets: Annotated[list[DatasetName], Field(min_length=1)]
    target_dataset: DatasetName
    transport: Transport
    ssh_credentials: int | None = None


class NewSnapshotNameArgs(ApiModel):
    # Any strftime pattern: the wizard previews names while the schema is still being typed.
    naming_schema: str


class PairRequest(ApiModel):
    hostname: str
    public_key: PairingPublicKey = Field(alias="public-key")
    user: SshUsername | None = None


class PairArgs(ApiModel):
    data: PairRequest


class ReplicationConfig(ApiModel):
    max_parallel_replication_tasks: PositiveInt | None = 5



class RunOptions(ApiModel):
    #: Private in TrueNAS (v27): False for the watcher jobs of scheduled runs. Accepted and ignored here:
    #: every run, manual or scheduled, is a real job.
    really_run: bool = True


class RunArgs(ApiModel):
    id: int
    options: RunOptions = RunOptions()


_NOT_IN_ONETIME = {"name", "auto", "schedule", "only_matching_schedule", "enabled"}

#: `replication_run_onetime`: the create fields minus what only a saved task has, plus one-time options.
ReplicationRunOnetime = create_model(
    "ReplicationRunOnetime",
    __base__=ApiModel,
    **{name: (info.annotation, info) for name, info in ReplicationCreate.model_fields.items()
       if name not in _NOT_IN_ONETIME},
    exclude_mountpoint_property=(bool, True),
    only_from_scratch=(bool, False),
    mount=(bool, True),
)


class RunOnetimeArgs(ApiModel):
    replication_run_onetime: ReplicationRunOnetime  # type: ignore[valid-type]


class PlanArgs(ApiModel):
    #: A saved task's id, or an unsaved task definition (the `replication_create` shape, validated by the
    #: method itself so that its errors read `replication_plan.<field>`).
    replication_plan: int | dict[str, Any]
