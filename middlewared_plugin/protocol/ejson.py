"""TrueNAS's "ejson": JSON plus `{"$date": ms}` for datetimes (reference §1.2).

Reading a message is two steps, so that a bad value never costs a request its id: `parse` reads plain JSON
(the server checks the envelope on that), and `decode` turns extended-JSON values into Python ones. The
server decodes only arguments (`MethodSpec.parse_params`), where a value it cannot take is an invalid
argument of that request. `loads` does both, for everything else that reads ejson.
"""
from __future__ import annotations

import json
from datetime import UTC, date, datetime, time
from typing import Any

#: Deeper arguments are refused: no API argument comes near it, and the recursive code that handles values
#: (this decoder, validation, the encoder) must stay well inside Python's recursion limit.
MAX_DEPTH = 64
#: For `loads`: what the server sends nests arguments inside its own messages and records (a job's
#: `arguments`), so a little deeper than MAX_DEPTH, and still well inside the recursion limit.
_LOADS_MAX_DEPTH = 256
#: Python refuses to convert longer digit strings (`sys.get_int_max_str_digits`); see `HugeInt`.
_MAX_INT_DIGITS = 4300


class DecodeError(ValueError):
    """A value `decode` cannot take; `path` leads to it (keys and list indexes)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.path: list[str | int] = []


class HugeInt:
    """An integer literal too long for Python to convert, kept in place so the message still parses.

    Refused by `decode`; never a valid request id.
    """

    def __init__(self, digits: str):
        self.digits = digits


def _parse_int(digits: str) -> int | HugeInt:
    return int(digits) if len(digits.lstrip("-")) <= _MAX_INT_DIGITS else HugeInt(digits)


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        if obj.tzinfo is None:
            obj = obj.replace(tzinfo=UTC)
        return {"$date": int(obj.timestamp() * 1000)}
    if isinstance(obj, date):
        return {"$type": "date", "$value": obj.isoformat()}
    if isinstance(obj, time):
        return {"$time": obj.strftime("%H:%M:%S")}
    if isinstance(obj, set | frozenset):
        return {"$set": sorted(obj, key=repr)}
    if isinstance(obj, HugeInt):
        # Only ever echoed back (the legacy protocol's `offendingMessage`).
        return obj.digits
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _extended(obj: dict[str, Any]) -> Any:
    """The Python value of an extended-JSON object whose members are decoded already; other objects as they are."""
    if len(obj) == 1:
        if "$date" in obj and isinstance(obj["$date"], int | float) and not isinstance(obj["$date"], bool):
            try:
                return datetime.fromtimestamp(obj["$date"] / 1000, UTC)
            except (OverflowError, ValueError, OSError):
                raise DecodeError("$date is not a representable time (milliseconds since 1970)") from None
        if "$time" in obj and isinstance(obj["$time"], str):
            try:
                return time.fromisoformat(obj["$time"])
            except ValueError:
                raise DecodeError("$time is not a time (HH:MM:SS)") from None
        if "$set" in obj and isinstance(obj["$set"], list):
            try:
                return set(obj["$set"])
            except TypeError:
                raise DecodeError("$set members cannot be arrays or objects") from None
    if obj.keys() == {"$type", "$value"} and obj["$type"] == "date":
        if not isinstance(obj["$value"], str):
            raise DecodeError("$value of a date must be a string (YYYY-MM-DD)")
        try:
            return date.fromisoformat(obj["$value"])
        except ValueError:
            raise DecodeError("$value is not a date (YYYY-MM-DD)") from None
    return obj


def _decode(value: Any, depth: int) -> Any:
    """`value` decoded; `depth` is how many more levels of arrays and objects may follow."""
    if isinstance(value, HugeInt):
        raise DecodeError(f"Integer has more than {_MAX_INT_DIGITS} digits")
    if not isinstance(value, list | dict):
        return value
    if depth <= 0:
        raise DecodeError("Value is nested too deeply")
    items = enumerate(value) if isinstance(value, list) else value.items()
    decoded: dict[Any, Any] = {}
    for key, item in items:
        try:
            decoded[key] = _decode(item, depth - 1)
        except DecodeError as exc:
            exc.path.insert(0, key)
            raise
    if isinstance(value, list):
        return list(decoded.values())
    return _extended(decoded)


def decode(value: Any, max_depth: int = MAX_DEPTH) -> Any:
    """`value` (parsed JSON) with its extended-JSON values as Python values; raises DecodeError.

    Also refuses what the rest of the server could not handle: arrays and objects nested more than
    `max_depth` levels deep, and `HugeInt`s. Values that are not JSON (internal callers' datetimes, sets...)
    pass through unchanged.
    """
    return _decode(value, max_depth)


def parse(text: str | bytes) -> Any:
    """Plain JSON, extended-JSON objects left as they are; ValueError when it is not JSON."""
    try:
        return json.loads(text, parse_int=_parse_int)
    except RecursionError:
        # The C parser counts nesting against the interpreter's recursion limit.
        raise ValueError("JSON nested too deeply") from None


def dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(obj, default=_default, **kwargs)


def loads(text: str | bytes) -> Any:
    """Parse and decode; ValueError (or its DecodeError) when either fails."""
    return decode(parse(text), _LOADS_MAX_DEPTH)
