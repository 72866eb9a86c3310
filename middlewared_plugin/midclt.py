"""`midclt`: call the API from a shell, like TrueNAS's own (reference §1.9). Public protocol only, so it
works against a real TrueNAS as well.

    midclt [--uri URI] [--ca-file PEM | --fingerprint SHA256] [-U USER -P PASS | -K KEY] [-t SECS]
           call [-j] METHOD [ARG ...]
    midclt subscribe EVENT [-n N] [-t SECS]
    midclt ping

Differences from TrueNAS's midclt, on purpose: a failed login exits 1 (not 0); `-K` without `-U` uses the
legacy `auth.login_with_api_key` instead of SCRAM, and `-K` falls back to API_KEY_PLAIN on a server without
SCRAM instead of refusing; the job progress bar also shows bytes, rate and ETA; `--ca-file` and `--fingerprint`
(a certificate pin) verify a wss:// server that no system CA vouches for.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pprint
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from middlewared_plugin.client import DEFAULT_CALL_TIMEOUT, Client
from middlewared_plugin.errors import CallError, ValidationErrors
from middlewared_plugin.settings import default_data_dir
from middlewared_plugin.units import format_bytes, format_duration

STDIN_ARG = "-"


def default_uri() -> str:
    """The server's default unix socket: `<data dir>/middlewared.sock`."""
    return f"ws+unix://{default_data_dir() / 'middlewared.sock'}"


def default_timeout() -> float:
    return float(os.environ.get("CALL_TIMEOUT", DEFAULT_CALL_TIMEOUT))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="midclt", description="Call the middlewared_plugin / TrueNAS API")
    parser.add_argument("-u", "--uri", help="ws://, wss:// or ws+unix:// URI (default: the local unix socket)")
    parser.add_argument("-U", "--username")
    parser.add_argument("-P", "--password")
    parser.add_argument("-K", "--api-key", help="API key; with -U it logs in by SCRAM-SHA-512 (or API_KEY_PLAIN "
                                                "with --plain or where the server has no SCRAM)")
    parser.add_argument("--plain", action="store_true", help="send the API key itself (API_KEY_PLAIN), not SCRAM")
    parser.add_argument("-t", "--timeout", type=float, default=None,
                        help=f"call timeout in seconds (default $CALL_TIMEOUT or {DEFAULT_CALL_TIMEOUT:g})")
    parser.add_argument("--insecure", action="store_true", help="do not verify the wss:// certificate")
    parser.add_argument("--ca-file", help="verify the wss:// certificate against the CA certificates in this file")
    parser.add_argument("--fingerprint", help="accept exactly the wss:// certificate with this SHA-256 fingerprint "
                                              "(what `middlewared-plugin serve` prints), whoever signed it")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on error")
    sub = parser.add_subparsers(dest="command", required=True)

    call = sub.add_parser("call", help="call a method")
    call.add_argument("-j", "--job", action="store_true", help="follow the job and print its result")
    call.add_argument("-jp", "--job-print", choices=["progressbar", "description"], default="progressbar")
    call.add_argument("method")
    call.add_argument("args", nargs="*", help="JSON when it parses, else a string; a final - reads stdin")

    subscribe = sub.add_parser("subscribe", help="print events as they arrive")
    subscribe.add_argument("event")
    subscribe.add_argument("-n", "--number", type=int, default=0, help="exit after N events (0: never)")
    subscribe.add_argument("-t", "--timeout", dest="event_timeout", type=float, default=None,
                           help="exit 1 if the N events do not arrive in this many seconds")

    sub.add_parser("ping", help="call core.ping")
    return parser


def parse_call_args(args: Sequence[str], stdin: TextIO | None = None) -> list[Any]:
    """Each argument is JSON if it parses, else a plain string; a final `-` is one JSON document from stdin."""
    params: list[Any] = []
    for i, arg in enumerate(args):
        if arg == STDIN_ARG and i == len(args) - 1:
            params.append(json.load(stdin if stdin is not None else sys.stdin))
            continue
        try:
            params.append(json.loads(arg))
        except ValueError:
            params.append(arg)
    return params


def format_result(result: Any) -> str:
    """Ints and strings print raw, anything else as JSON (what TrueNAS's midclt does; bools are ints there)."""
    if isinstance(result, int | str):
        return str(result)
    return json.dumps(result)


def format_error(error: CallError) -> str:
    """Reason, then the server's traceback, then `extra`, as midclt prints a failed call."""
    if isinstance(error, ValidationErrors):
        return str(error)
    lines = [str(error)]
    trace = getattr(error, "trace", None)
    if isinstance(trace, dict) and trace.get("formatted"):
        lines.append(str(trace["formatted"]).rstrip("\n"))
    if error.extra is not None:
        lines.append(pprint.pformat(error.extra))
    return "\n".join(lines)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def render_progress(job: dict[str, Any], width: int = 80) -> str:
    """One status line for a job dict: bar, percent, description, and bytes/rate/ETA when
    `progress.extra` reports them (`bytes_sent`, `bytes_total`, `rate` bytes/s, `eta` s; any may be missing)."""
    progress = job.get("progress") if isinstance(job.get("progress"), dict) else {}
    percent = _number(progress.get("percent"))
    extra = progress.get("extra") if isinstance(progress.get("extra"), dict) else {}
    sent, total = _number(extra.get("bytes_sent")), _number(extra.get("bytes_total"))
    rate, eta = _number(extra.get("rate")), _number(extra.get("eta"))
    if eta is None and rate and sent is not None and total is not None:
        eta = max(total - sent, 0) / rate
    details = []
    if sent is not None:
        details.append(format_bytes(sent) + (f" / {format_bytes(total)}" if total is not None else ""))
    if rate is not None:
        details.append(f"{format_bytes(rate)}/s")
    if eta is not None:
        details.append(f"ETA {format_duration(eta)}")
    bar_width = 20
    filled = round(bar_width * min(max(percent or 0, 0), 100) / 100)
    head = f"[{'#' * filled}{'.' * (bar_width - filled)}] " + (f"{percent:3.0f}%" if percent is not None else "  ?%")
    description = str(progress.get("description") or job.get("description") or "")
    tail = " | ".join(details)
    room = width - len(head) - (len(tail) + 3 if tail else 0) - 1
    if len(description) > room:
        description = description[:max(room - 1, 0)] + "…" if room > 1 else ""
    line = " ".join(part for part in (head, description) if part)
    return f"{line} | {tail}" if tail else line


class ProgressPrinter:
    """The `call -j` callback: redraws one line on a terminal, prints changed lines otherwise."""

    def __init__(self, stream: TextIO, mode: str = "progressbar"):
        self.stream = stream
        self.mode = mode
        self.tty = stream.isatty()
        self.last = ""
        self.drawn = False

    def __call__(self, job: dict[str, Any]) -> None:
        if self.mode == "description":
            line = str((job.get("progress") or {}).get("description") or "")
            if line and line != self.last:
                self.stream.write(line + "\n")
        else:
            line = render_progress(job, shutil.get_terminal_size().columns - 1 if self.tty else 120)
            if line != self.last:
                self.stream.write(f"\r{line}\x1b[K" if self.tty else line + "\n")
                self.drawn = self.tty
        self.last = line
        self.stream.flush()

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


async def _login(client: Client, ns: argparse.Namespace) -> str | None:
    """None on success, else the reason the login failed."""
    try:
        if ns.api_key:
            ok = await client.login_with_api_key(ns.api_key, ns.username, plain=ns.plain)
        elif ns.username and ns.password is not None:
            ok = await client.login_with_password(ns.username, ns.password)
        else:
            return None
    except CallError as e:
        return str(e)
    return None if ok else "Invalid credentials"


async def run(ns: argparse.Namespace, params: list[Any], stdout: TextIO, stderr: TextIO) -> int:
    timeout = ns.timeout if ns.timeout is not None else default_timeout()

    def fail(text: str) -> int:
        if not ns.quiet:
            print(text, file=stderr)
        return 1

    try:
        client = Client(ns.uri or default_uri(), verify_ssl=not ns.insecure, ssl_ca_file=ns.ca_file,
                        ssl_fingerprint=ns.fingerprint, call_timeout=timeout)
    except ValueError as e:  # a malformed --fingerprint
        return fail(str(e))
    try:
        await client.connect()
    except Exception as e:  # OSError, a bad URI, websockets' handshake errors, a failed set_options...
        return fail(f"Failed to connect to {client.uri}: {e}")
    try:
        if (reason := await _login(client, ns)) is not None:
            return fail(f"Failed to login: {reason}")
        if ns.command == "ping":
            print(await client.ping(), file=stdout)
        elif ns.command == "call":
            printer = ProgressPrinter(stderr, ns.job_print) if ns.job and not ns.quiet else None
            try:
                result = await client.call(ns.method, *params, job=ns.job, callback=printer)
            finally:
                if printer is not None:
                    printer.finish()
            print(format_result(result), file=stdout)
        else:
            return await _subscribe(client, ns, stdout, fail)
    except CallError as e:
        return fail(format_error(e))
    finally:
        await client.close()
    return 0


async def _subscribe(client: Client, ns: argparse.Namespace, stdout: TextIO, fail: Callable[[str], int]
                     ) -> int:
    finished: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen = 0

    def on_event(params: dict[str, Any]) -> None:
        nonlocal seen
        if finished.done():  # events already queued behind the N-th one
            return
        print(json.dumps(params), file=stdout, flush=True)
        seen += 1
        if ns.number and seen >= ns.number and not finished.done():
            finished.set_result(0)

    def on_end(error: Any) -> None:
        if not finished.done():
            reason = error.get("reason") if isinstance(error, dict) else error
            finished.set_result(fail(f"Subscription ended: {reason}") if error else 0)

    await client.subscribe(ns.event, on_event, on_end)
    try:
        return await asyncio.wait_for(finished, ns.event_timeout)
    except TimeoutError:
        return fail(f"Timed out after {ns.event_timeout:g} s with {seen} event(s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    # stdin is read before the loop starts: a blocking read has no place inside it.
    try:
        params = parse_call_args(ns.args) if ns.command == "call" else []
    except ValueError as e:
        parser.error(f"standard input is not a JSON document: {e}")
    try:
        return asyncio.run(run(ns, params, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
