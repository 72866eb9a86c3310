"""midclt's pure parts: command line, argument decoding, result/error printing, the job progress line (§1.9)."""
from __future__ import annotations

import io

import pytest

from middlewared_plugin.client import ClientException
from middlewared_plugin.errors import ValidationErrors
from middlewared_plugin.midclt import (
    ProgressPrinter,
    build_parser,
    default_uri,
    format_bytes,
    format_error,
    format_result,
    parse_call_args,
    render_progress,
)


def test_call_command_line():
    ns = build_parser().parse_args(
        ["--uri", "ws://h/api/current", "-U", "root", "-P", "pw", "-t", "5", "call", "-j", "replication.run", "3"])
    assert (ns.uri, ns.username, ns.password, ns.timeout) == ("ws://h/api/current", "root", "pw", 5.0)
    assert (ns.command, ns.job, ns.method, ns.args) == ("call", True, "replication.run", ["3"])


def test_subscribe_command_line_has_its_own_timeout():
    ns = build_parser().parse_args(["-t", "9", "subscribe", "replication.query", "-n", "2", "-t", "3"])
    assert (ns.command, ns.event, ns.number, ns.timeout, ns.event_timeout) == ("subscribe", "replication.query",
                                                                                2, 9.0, 3.0)


def test_api_key_and_ping():
    ns = build_parser().parse_args(["-K", "1-abc", "ping"])
    assert (ns.api_key, ns.command) == ("1-abc", "ping")


def test_default_uri_is_the_data_dir_socket(monkeypatch, tmp_path):
    monkeypatch.setenv("MIDDLEWARED_PLUGIN_DATA", str(tmp_path))
    assert default_uri() == f"ws+unix://{tmp_path}/middlewared.sock"


def test_args_are_json_when_they_parse_else_strings():
    assert parse_call_args(["5", "tank/a", '{"a": [1]}', "true", "null", "[1", '"quoted"']) == \
        [5, "tank/a", {"a": [1]}, True, None, "[1", "quoted"]


def test_final_dash_reads_one_json_document_from_stdin():
    assert parse_call_args(["1", "-"], io.StringIO('{"direction": "PUSH"}\n')) == [1, {"direction": "PUSH"}]


def test_dash_that_is_not_last_is_a_string():
    assert parse_call_args(["-", "1"], io.StringIO("ignored")) == ["-", 1]


@pytest.mark.parametrize(("result", "printed"), [
    (5, "5"),
    ("pong", "pong"),
    (None, "null"),
    ({"id": 1, "state": {"$date": 1700000000000}}, '{"id": 1, "state": {"$date": 1700000000000}}'),
    ([1, "a"], '[1, "a"]'),
])
def test_result_printing(result, printed):
    assert format_result(result) == printed


def test_error_printing_has_reason_trace_and_extra():
    exc = ClientException("[EFAULT] boom", 14, trace={"formatted": "Traceback (most recent call last):\n  x\n"},
                          extra={"k": 1})
    assert format_error(exc) == "[EFAULT] boom\nTraceback (most recent call last):\n  x\n{'k': 1}"


def test_validation_error_printing_is_one_line_per_error():
    exc = ValidationErrors([("data.naming_schema", "Field required", 22), ("data.lifetime_value", "bad", 22)])
    assert format_error(exc) == "[EINVAL] data.naming_schema: Field required\n[EINVAL] data.lifetime_value: bad"


def job(percent, description="", extra=None):
    return {"id": 1, "state": "RUNNING", "progress": {"percent": percent, "description": description, "extra": extra}}


def test_progress_line_with_bytes_rate_and_eta():
    line = render_progress(job(37, "Sending tank/a@auto-1",
                               {"bytes_sent": 3 * 2**20, "bytes_total": 8 * 2**20, "rate": 2**20, "eta": 5}), 120)
    assert line == "[#######.............]  37% Sending tank/a@auto-1 | 3.0 MiB / 8.0 MiB | 1.0 MiB/s | ETA 0:00:05"


def test_progress_eta_is_derived_from_rate_when_missing():
    line = render_progress(job(50, "x", {"bytes_sent": 1000, "bytes_total": 4000, "rate": 100}), 120)
    assert line.endswith("ETA 0:00:30")


@pytest.mark.parametrize("extra", [None, {}, "text", {"bytes_sent": None, "rate": "fast"}, [1, 2]])
def test_progress_tolerates_missing_or_odd_extra(extra):
    assert render_progress(job(10, "Waiting", extra), 80) == "[##..................]  10% Waiting"


def test_progress_without_percent_or_progress():
    assert render_progress({"id": 1, "progress": {"percent": None, "description": None, "extra": None}}) == \
        "[....................]   ?%"
    assert render_progress({"id": 1}) == "[....................]   ?%"


def test_progress_line_fits_the_width_by_shortening_the_description():
    line = render_progress(job(5, "d" * 200, {"bytes_sent": 10}), 60)
    assert len(line) <= 60 and line.endswith("| 10 B") and "…" in line


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 2**40, "5.0 TiB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_printer_writes_each_changed_line_when_not_a_terminal():
    out = io.StringIO()
    printer = ProgressPrinter(out)
    for event in (job(0), job(0), job(50, "half"), job(100, "done")):
        printer(event)
    printer.finish()
    assert out.getvalue().splitlines() == [
        "[....................]   0%", "[##########..........]  50% half", "[####################] 100% done"]


def test_printer_description_mode_prints_new_descriptions_only():
    out = io.StringIO()
    printer = ProgressPrinter(out, "description")
    for event in (job(0), job(10, "a"), job(20, "a"), job(30, "b")):
        printer(event)
    assert out.getvalue() == "a\nb\n"
