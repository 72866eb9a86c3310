"""JSON-RPC 2.0 messages as TrueNAS frames them: request validation order, error objects (§1.2, §1.5).

Method invocation and response shaping go through jsonrpcserver. It falls short of TrueNAS in three
places, handled here: its request validation answers with other messages and drops the request id, its
"method not found" text differs from TrueNAS's "Method does not exist" (which clients test for), and its
error data is a plain string where TrueNAS sends an object.
"""
from __future__ import annotations

import errno
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from jsonrpcserver.async_dispatcher import dispatch_request
from jsonrpcserver.dispatcher import to_response
from jsonrpcserver.exceptions import JsonRpcError
from jsonrpcserver.request import Request
from jsonrpcserver.response import to_serializable
from jsonrpcserver.result import Success
from jsonrpcserver.sentinels import NOCONTEXT, NOID

from middlewared_plugin.errors import CallError, ValidationError, ValidationErrors, errname

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
SERIALIZE_ERROR = -32603
TOO_MANY_CALLS = -32000
CALL_ERROR = -32001


class InvalidRequest(Exception):
    pass


def valid_id(id: Any) -> bool:
    """A request id we answer with: null, an integer (not a boolean) or a string."""
    return id is None or (isinstance(id, int | str) and not isinstance(id, bool))


def validate_request(message: Any) -> dict[str, Any]:
    """Check a decoded message in TrueNAS's order; raise InvalidRequest with the reason."""
    if isinstance(message, list):
        raise InvalidRequest("Batch messages are not supported at this time")
    if not isinstance(message, dict):
        raise InvalidRequest("Invalid Request: a request must be an object")
    if message.get("jsonrpc") != "2.0":
        raise InvalidRequest("Invalid Request: jsonrpc must be '2.0'")
    if "id" in message and not valid_id(message["id"]):
        raise InvalidRequest("Invalid Request: id must be null, an integer or a string")
    if not isinstance(message.get("method"), str) or not message["method"]:
        raise InvalidRequest("Invalid Request: method must be a non-empty string")
    if "params" in message and not isinstance(message["params"], list):
        raise InvalidRequest("Invalid Request: params must be an array")
    return message


def error_data(exc: BaseException, *, with_trace: bool) -> tuple[int, str, dict[str, Any]]:
    """(code, message, data) for an exception raised by a method.

    `trace` is TrueNAS's traceback object when `with_trace` (the caller is logged in), else null: who has
    not logged in learns nothing of the server's code.
    """
    trace = {
        "class": type(exc).__name__,
        "formatted": "".join(traceback.format_exception(exc)),
        "repr": repr(exc),
    } if with_trace else None
    if isinstance(exc, ValidationErrors | ValidationError):
        return INVALID_PARAMS, "Invalid params", {
            "error": errno.EINVAL if isinstance(exc, ValidationErrors) else exc.errno,
            "errname": errname(errno.EINVAL if isinstance(exc, ValidationErrors) else exc.errno),
            "reason": str(exc),
            "trace": trace,
            "extra": exc.triples(),
        }
    if isinstance(exc, CallError):
        return CALL_ERROR, "Method call error", {
            "error": exc.errno, "errname": errname(exc.errno), "reason": str(exc), "trace": trace,
            "extra": exc.extra,
        }
    return CALL_ERROR, "Method call error", {
        "error": errno.EINVAL, "errname": "EINVAL", "reason": str(exc), "trace": trace, "extra": None,
    }


def error_response(id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": error}


async def invoke(
    method: str, params: list[Any], id: Any, call: Callable[[], Awaitable[Any]], *, with_trace: Callable[[], bool],
) -> dict[str, Any] | None:
    """Run `call` through jsonrpcserver; the serialisable response, or None for a notification (id NOID).

    `with_trace()` is asked when the call has failed (a login or logout may have happened in between).
    """

    async def handler(*_params: Any) -> Any:
        try:
            return Success(await call())
        except Exception as exc:
            code, message, data = error_data(exc, with_trace=with_trace())
            raise JsonRpcError(code, message, data) from exc

    request = Request(method, params, id)
    _, result = await dispatch_request({method: handler}, NOCONTEXT, request)
    if id is NOID:
        return None
    return to_serializable(to_response(request, result))  # type: ignore[return-value]
