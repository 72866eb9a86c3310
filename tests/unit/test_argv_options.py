"""Issue 11 item 7, as a property: no argument derived from user input is ever parsed as an option.

Every argv builder of `zfs/` (the pure ones and each `Zfs` method) and the `ssh` command line of `remote/`
parameters is run with hypothesis-made names (valid ones, hostile ones beginning with `-`, arbitrary text).
Either the builder refuses the name (EINVAL) or the options GNU getopt reads from the argv (it permutes, so
options after positionals count too; `--` ends them) are exactly those read when every user value is a
harmless name. `Zfs` methods run against a runner that only writes the argv down: the names hypothesis makes
could be real datasets, so no command may run.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import CommandResult, Process, Runner
from middlewared_plugin.remote.ssh import SshParams
from middlewared_plugin.replication.transports.ssh import openssh_argv
from middlewared_plugin.zfs import Zfs, import_pool_argv, recv_abort_argv, recv_argv, send_argv
from middlewared_plugin.zfs.features import forget_features

#: Options that take an argument, per command (OpenZFS's and OpenSSH's getopt strings).
TAKES_ARGUMENT = {
    ("zfs", "send"): "iIt", ("zfs", "receive"): "ox", ("zfs", "get"): "ostd", ("zfs", "create"): "oVb",
    ("zfs", "snapshot"): "o", ("zfs", "mount"): "o", ("zfs", "list"): "ostd", ("zpool", "import"): "dorcRT",
    ("zpool", "list"): "oT", ("zpool", "get"): "o", ("zpool", "status"): "T", ("ssh",): "BbcDEeFIiJLlmOopQRSWw",
}
HARMLESS = {"pool": "tank", "dataset": "tank/a", "snapshot": "tank/a@s", "part": "s", "tag": "t",
            "property": "readonly", "host": "nas", "user": "root", "guid": "1"}


def parsed_options(argv: Sequence[str]) -> list[str]:
    """The option letters (and `-x`-style optargs' owners) GNU getopt reads, in order."""
    words = 1 if argv[0] == "ssh" else 2
    takes = TAKES_ARGUMENT.get(tuple(argv[:words]), "")
    options: list[str] = []
    args = list(argv[words:])
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            continue  # a positional; GNU getopt goes on looking for options after it
        for j, letter in enumerate(arg[1:], 1):
            options.append(letter)
            if letter in takes:
                if j == len(arg) - 1:
                    i += 1  # the next word is the argument, whatever it looks like
                break
    return options


class WritingRunner(Runner):
    """Records argv instead of running it; answers `zfs get` with a property table so features are probed."""

    def __init__(self) -> None:
        self.name = "recorder"
        self.argvs: list[list[str]] = []

    async def run(self, argv: Sequence[str], *, input: bytes | None = None, check: bool = True,
                  timeout: float | None = None) -> CommandResult:
        self.argvs.append(list(argv))
        out = b"\tPROPERTY  EDIT  INHERIT  VALUES\n\treadonly  YES  YES  on | off\n" if list(argv) == ["zfs", "get"] \
            else b""
        return CommandResult(tuple(argv), 0, out, b"")

    async def start(self, argv: Sequence[str], *, stdin: bool = False, stdout: bool = False) -> Process:
        raise AssertionError("no builder under test streams")


ZfsCall = Callable[[Zfs, dict[str, str]], Awaitable[Any]]
ZFS_METHODS: dict[str, tuple[tuple[str, ...], ZfsCall]] = {
    "import_pool": (("guid", "pool"), lambda z, v: z.import_pool(v["guid"], new_name=v["pool"], search_dirs=["/d"])),
    "export_pool": (("pool",), lambda z, v: z.export_pool(v["pool"])),
    "destroy_pool": (("pool",), lambda z, v: z.destroy_pool(v["pool"])),
    "pool_status": (("pool",), lambda z, v: z.pool_status(v["pool"])),
    "pool_features": (("pool",), lambda z, v: z.pool_features(v["pool"])),
    "list_datasets": (("dataset", "property"),
                      lambda z, v: z.list_datasets(v["dataset"], user_properties=[v["property"]])),
    "list_snapshots": (("dataset",), lambda z, v: z.list_snapshots(v["dataset"])),
    "exists": (("dataset",), lambda z, v: z.exists(v["dataset"])),
    "create_dataset": (("dataset", "property"),
                       lambda z, v: z.create_dataset(v["dataset"], properties={v["property"]: "x"})),
    "destroy_dataset": (("dataset",), lambda z, v: z.destroy_dataset(v["dataset"], recursive=True, force=True)),
    "get_properties": (("snapshot", "property"), lambda z, v: z.get_properties(v["snapshot"], [v["property"]])),
    "set_properties": (("dataset", "property"), lambda z, v: z.set_properties(v["dataset"], {v["property"]: "x"})),
    "mount": (("dataset",), lambda z, v: z.mount(v["dataset"])),
    "inherit_property": (("dataset", "property"),
                         lambda z, v: z.inherit_property(v["dataset"], v["property"], recursive=True)),
    "exclude_received_property": (("dataset", "property"), lambda z, v: z.exclude_received_property(
        v["dataset"], v["property"], recursive=True)),
    "rollback": (("snapshot",), lambda z, v: z.rollback(v["snapshot"], destroy_newer=True)),
    "create_snapshots": (("dataset", "part"), lambda z, v: z.create_snapshots(v["dataset"], v["part"])),
    "destroy_snapshots": (("snapshot",), lambda z, v: z.destroy_snapshots([v["snapshot"]])),
    "hold": (("tag", "snapshot"), lambda z, v: z.hold(v["tag"], [v["snapshot"]], recursive=True)),
    "release": (("tag", "snapshot"), lambda z, v: z.release(v["tag"], [v["snapshot"]])),
    "list_holds": (("snapshot",), lambda z, v: z.list_holds([v["snapshot"]])),
}
PURE: dict[str, tuple[tuple[str, ...], Callable[[dict[str, str]], list[str]]]] = {
    "import_pool_argv": (("guid", "pool"), lambda v: import_pool_argv(v["guid"], new_name=v["pool"])),
    "send_argv": (("snapshot", "part"), lambda v: send_argv(v["snapshot"], base=v["part"], intermediates=True)),
    "recv_argv": (("dataset", "property"), lambda v: recv_argv(
        v["dataset"], force=True, exclude_properties=[v["property"]], override_properties={v["property"]: "-x"})),
    "recv_abort_argv": (("dataset",), lambda v: recv_abort_argv(v["dataset"])),
    "openssh_argv": (("host", "user"), lambda v: openssh_argv(
        SshParams(v["host"], username=v["user"]), Path("/k"), Path("/h"))),
}

component = st.text(st.sampled_from("abz09_.: -"), min_size=1, max_size=6)
hostile = st.builds(lambda letters, rest: "-" + letters + rest, st.text("FXRrofdpnvu", min_size=1, max_size=3),
                    st.text(max_size=8))
name = st.one_of(component, hostile, st.text(max_size=12),
                 st.builds(lambda a, b: f"{a}/{b}", component, component),
                 st.builds(lambda a, b: f"{a}@{b}", component, component),
                 st.builds(lambda a, b, c: f"{a}/{b}@{c}", component, component, component))


def record(call: ZfsCall, given_values: dict[str, str]) -> list[list[str]] | None:
    """The argv the method ran (probes left out), or None when it refused the names (raising EINVAL, or
    answering without running anything, as `exists` does for a name no dataset can have)."""
    runner = WritingRunner()
    # Features are cached per runner name: probe afresh so that every recording runs the same probes.
    forget_features(runner)
    try:
        asyncio.run(call(Zfs(runner), given_values))
    except CallError as e:
        assert e.errno == 22, e  # EINVAL: refused before anything ran
        return None
    # Feature probes are constant command lines: leave them out.
    ran = [a for a in runner.argvs
           if a[:2] != ["test", "-S"] and a != ["zfs", "get"] and not any("mwpt-probe" in w for w in a)]
    return ran or None


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(ZFS_METHODS)), st.data())
def test_zfs_methods_never_let_a_name_become_an_option(method: str, data: st.DataObject) -> None:
    keys, call = ZFS_METHODS[method]
    drawn = {key: data.draw(name, label=key) for key in keys}
    for key in keys:  # one key hostile at a time keeps the harmless baseline meaningful for the rest
        mixed = {**{k: HARMLESS[k] for k in keys}, key: drawn[key]}
        argvs = record(call, mixed)
        if argvs is None:
            continue
        baseline = record(call, {k: HARMLESS[k] for k in keys})
        assert baseline is not None
        assert [parsed_options(a) for a in argvs] == [parsed_options(a) for a in baseline], (method, mixed, argvs)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(PURE)), st.data())
def test_pure_builders_never_let_a_name_become_an_option(builder: str, data: st.DataObject) -> None:
    keys, build = PURE[builder]
    given_values = {key: data.draw(name, label=key) for key in keys}
    try:
        argv = build(given_values)
    except (CallError, ValueError):
        return
    assert parsed_options(argv) == parsed_options(build({k: HARMLESS[k] for k in keys})), (builder, argv)


def test_the_getopt_model_sees_what_used_to_happen() -> None:
    """The model would have caught issue 11's command lines (a check of the check)."""
    assert parsed_options(["zpool", "import", "-d", "/d", "123", "-FX"]) == ["d", "F", "X"]
    assert parsed_options(["zpool", "import", "-d", "/d", "--", "123", "-FX"]) == ["d"]
    assert parsed_options(["zfs", "receive", "-o", "-FX", "tank/a"]) == ["o"]
    assert parsed_options(["ssh", "-l", "root", "-oProxyCommand=x"]) == ["l", "o"]
