"""The transport interface: how one `zfs send` stream gets from the source host into `zfs recv` on the target.

A transport knows two runners (the source and the target side, for control commands such as listings,
destroys and property changes) and one thing more: how to connect a send to a receive across them while
counting the bytes in our own pipe. The executor calls nothing else, so LOCAL, SSH and SSH+NETCAT are
interchangeable and a new transport (with a bandwidth limit, say) is one module.

Pipefail semantics: `pipe` fails if either stage fails, with that stage's stderr in the error; cancelling
the awaiting task kills both stages (and any helper) so an abort leaves nothing running.
"""
from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import Runner

#: Called with the number of bytes that just crossed the pipe (many times per second at most).
ByteCounter = Callable[[int], None]

#: Bytes per read from the sending side; large reads keep the per-chunk overhead below 1%.
CHUNK_SIZE = 1024 * 1024


class PipeFailed(CallError):
    """A send/receive pipeline failed; `stage` is "send", "receive" or "transport", `transient` says
    whether retrying can help (connection lost, broken pipe, stall) as opposed to a ZFS refusal."""

    def __init__(self, stage: str, message: str, *, transient: bool):
        super().__init__(message)
        self.stage = stage
        self.transient = transient


@dataclass(frozen=True)
class PipeResult:
    bytes: int


class Transport(ABC):
    #: "LOCAL", "SSH" or "SSH+NETCAT".
    name: str
    #: Control-command runners for each side of the replication.
    source: Runner
    target: Runner

    @abstractmethod
    async def pipe(
        self,
        send_argv: Sequence[str],
        recv_argv: Sequence[str],
        *,
        on_bytes: ByteCounter,
        stall_timeout: float | None = None,
    ) -> PipeResult:
        """Run `send_argv` on the source side into `recv_argv` on the target side; raise PipeFailed.

        `stall_timeout`: seconds without a byte after which the pipeline is killed (transient failure).
        """

    def describe(self, send_argv: Sequence[str], recv_argv: Sequence[str]) -> str:
        """The pipeline as the task log shows it."""
        return f"[{self.name}] {shlex.join(send_argv)} | {shlex.join(recv_argv)}"

    async def close(self) -> None:  # noqa: B027 - stateless transports need nothing here
        """Release connections or helpers the transport holds."""
