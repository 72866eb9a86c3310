"""A receiver still working after the last byte: `zfs recv` commits what it got only once the stream ended,
and on a slow pool (or many snapshots in one `-I` stream) that takes longer than any grace given to a killed
stage. The pipe must wait for it and report its real exit status, not a lost connection (which would retry
into a target whose receive is still running), nor a stall."""
from __future__ import annotations

from pathlib import Path

import pytest

from middlewared_plugin.remote.runner import LocalRunner, Runner
from middlewared_plugin.remote.ssh import SshRunner
from middlewared_plugin.replication.transports import local
from middlewared_plugin.replication.transports.base import PipeFailed
from middlewared_plugin.replication.transports.local import LocalTransport, can_splice
from middlewared_plugin.replication.transports.netcat import NetcatTransport

# Longer than the (shortened) grace for killed stages below: with that grace, the receiver outlives it.
COMMIT_SECONDS = 1.0


@pytest.fixture(autouse=True)
def short_grace_for_killed_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "_REAP_TIMEOUT", 0.2)


def slow_committer(destination: Path, status: int = 0) -> list[str]:
    """Reads the whole stream, then takes COMMIT_SECONDS before the data appears at `destination`."""
    script = f'cat > "$1.part" && sleep {COMMIT_SECONDS} && mv "$1.part" "$1" && exit {status}'
    return ["sh", "-c", script, "slow-committer", str(destination)]


@pytest.mark.parametrize("data_path", ["spliced", "copied over SSH"])
async def test_the_pipe_waits_for_a_receiver_that_commits_after_the_stream_ended(
        data_path: str, runner: LocalRunner, remote: SshRunner, tmp_path: Path):
    stages: Runner = runner if data_path == "spliced" else remote
    assert can_splice(stages) == (data_path == "spliced")
    destination = tmp_path / "received"

    result = await LocalTransport(stages).pipe(["printf", "%s", "stream"], slow_committer(destination),
                                               on_bytes=lambda n: None)

    assert result.bytes == len("stream")
    assert destination.read_text() == "stream"


@pytest.mark.parametrize("data_path", ["spliced", "copied over SSH"])
async def test_a_receiver_failing_after_the_stream_ended_fails_the_pipe_with_its_status(
        data_path: str, runner: LocalRunner, remote: SshRunner, tmp_path: Path):
    stages: Runner = runner if data_path == "spliced" else remote

    with pytest.raises(PipeFailed) as failed:
        await LocalTransport(stages).pipe(["printf", "%s", "stream"], slow_committer(tmp_path / "received", 3),
                                          on_bytes=lambda n: None)

    assert failed.value.stage == "receive"
    assert "exited with status 3" in str(failed.value)


@pytest.mark.parametrize("direction", ["PUSH", "PULL"])
async def test_over_netcat_the_wait_for_a_committing_receiver_is_not_a_stall(
        direction: str, runner: LocalRunner, remote: SshRunner, tmp_path: Path):
    source, target = (runner, remote) if direction == "PUSH" else (remote, runner)
    transport = NetcatTransport(source, target, remote_runner=remote, direction=direction, active_side="LOCAL")
    destination = tmp_path / "received"

    result = await transport.pipe(["printf", "%s", "stream"], slow_committer(destination), on_bytes=lambda n: None,
                                  stall_timeout=COMMIT_SECONDS / 2)

    assert result.bytes == len("stream")
    assert destination.read_text() == "stream"
