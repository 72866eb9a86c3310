"""TrueNAS's "ejson": JSON plus `{"$date": ms}` for datetimes (reference §1.2)."""
from __future__ import annotations

import json
from datetime import UTC, date, datetime, time
from typing import Any


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
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if "$date" in obj and isinstance(obj["$date"], int | float):
            return datetime.fromtimestamp(obj["$date"] / 1000, UTC)
        if "$time" in obj and isinstance(obj["$time"], str):
            return time.fromisoformat(obj["$time"])
        if "$set" in obj and isinstance(obj["$set"], list):
            return set(obj["$set"])
    if obj.keys() == {"$type", "$value"} and obj["$type"] == "date":
        return date.fromisoformat(obj["$value"])
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(obj, default=_default, **kwargs)


def loads(text: str | bytes) -> Any:
    return json.loads(text, object_hook=_object_hook)
