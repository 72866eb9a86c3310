"""The client's pure parts: URIs, and how error objects and failed jobs become exceptions (reference §1.5, §1.9)."""
from __future__ import annotations

import errno

import pytest

from middlewared_plugin.client import ClientException, error_from_rpc, job_error, split_uri
from middlewared_plugin.errors import ENOTAUTHENTICATED, ValidationErrors


@pytest.mark.parametrize(("uri", "expected"), [
    ("ws+unix:///run/mw/middlewared.sock", ("/run/mw/middlewared.sock", "ws://localhost/api/current")),
    ("ws://127.0.0.1:6000/api/current", (None, "ws://127.0.0.1:6000/api/current")),
    ("ws://127.0.0.1:6000", (None, "ws://127.0.0.1:6000/api/current")),
    ("wss://nas.example:443/", (None, "wss://nas.example:443/api/current")),
    ("ws://nas/api/v25.10.2", (None, "ws://nas/api/v25.10.2")),
])
def test_split_uri(uri, expected):
    assert split_uri(uri) == expected


def test_split_uri_rejects_other_schemes():
    with pytest.raises(ValueError, match="Unsupported URI"):
        split_uri("http://nas/api/current")


def test_call_error_keeps_reason_verbatim_and_every_data_member():
    trace = {"class": "CallError", "formatted": "Traceback ...", "repr": "CallError('x')"}
    exc = error_from_rpc({"code": -32001, "message": "Method call error", "data": {
        "error": 2, "errname": "ENOENT", "reason": "[ENOENT] Credential does not exist",
        "trace": trace, "extra": {"id": 5}}})
    assert isinstance(exc, ClientException)
    assert str(exc) == "[ENOENT] Credential does not exist"
    assert (exc.errno, exc.errname, exc.trace, exc.extra, exc.code) == (2, "ENOENT", trace, {"id": 5}, -32001)


def test_not_authenticated_errno_is_visible_for_the_jobs_subscription_retry():
    exc = error_from_rpc({"code": -32001, "message": "Method call error",
                          "data": {"error": 207, "errname": "ENOTAUTHENTICATED",
                                   "reason": "[ENOTAUTHENTICATED] Not authenticated"}})
    assert exc.errno == ENOTAUTHENTICATED


def test_invalid_params_become_validation_errors():
    exc = error_from_rpc({"code": -32602, "message": "Invalid params", "data": {
        "error": 22, "errname": "EINVAL", "reason": "...",
        "extra": [["replication_create.naming_schema", "This field has no sense for push replication", 22],
                  [None, "Replication 7 does not exist", 2]]}})
    assert isinstance(exc, ValidationErrors)
    assert exc.triples() == [["replication_create.naming_schema", "This field has no sense for push replication", 22],
                             [None, "Replication 7 does not exist", 2]]
    assert str(exc) == ("[EINVAL] replication_create.naming_schema: This field has no sense for push replication\n"
                        "[ENOENT] ALL: Replication 7 does not exist")


def test_error_without_data_uses_the_message():
    exc = error_from_rpc({"code": -32601, "message": "Method does not exist"})
    assert str(exc) == "Method does not exist" and exc.code == -32601 and exc.errno is None


def test_failed_validation_job_raises_validation_errors():
    job = {"id": 4, "state": "FAILED", "error": "[EINVAL] x: bad",
           "exc_info": {"type": "VALIDATION", "errno": None, "extra": [["x", "bad", 22]]}}
    exc = job_error(job)
    assert isinstance(exc, ValidationErrors) and exc.triples() == [["x", "bad", 22]]


def test_failed_job_raises_client_exception_with_its_traceback():
    job = {"id": 4, "state": "FAILED", "error": "[EFAULT] Task is already running", "exception": "Traceback ...",
           "exc_info": {"type": "CallError", "errno": 14, "extra": None, "repr": "CallError(...)"}}
    exc = job_error(job)
    assert isinstance(exc, ClientException)
    assert str(exc) == "[EFAULT] Task is already running"
    assert exc.errno == errno.EFAULT and exc.trace["formatted"] == "Traceback ..."


def test_aborted_job_raises_ecanceled():
    exc = job_error({"id": 9, "state": "ABORTED", "error": None, "exc_info": None})
    assert isinstance(exc, ClientException) and exc.errno == errno.ECANCELED
    assert str(exc) == "Job was aborted"
