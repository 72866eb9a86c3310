"""The one query engine behind every `*.query` and `core.get_jobs` (reference §1.11).

`filter_list(items, filters, options)` validates both arguments, then: filter -> count -> order -> get ->
offset/limit -> select. Items are the already "extended" dicts, so every computed field can be filtered on.

Semantics worth knowing (TrueNAS's own where it defines them):
* Field paths are dotted (`ssh_credentials.id`); `\\.` escapes a dot in a key, a number indexes a list, `*` means
  "any element of this list", and `$date` on a datetime yields its epoch milliseconds (as on the wire).
  A missing key never matches; a filter never raises on data.
* Comparisons between values that cannot be compared (None > 1, "a" < 2) are false, like SQL NULL.
* Each operator may carry a `C` prefix (`C=`, `C^`, ...) for a case-insensitive comparison of strings.
* `~` (`re.match`: anchored at the start) runs on RE2, whose matching time is linear in the text: no pattern
  can stall the server (Python's `re` backtracks exponentially on `(a+)+$`). RE2 has no backreferences or
  lookaround; such a pattern is a validation error.
* `order_by` follows SQL: the first key is the primary one. A plain key puts nulls first ascending and last
  descending (SQLite's order); `nulls_first:`/`nulls_last:` choose explicitly (`nulls_last:-name` is allowed).
"""
from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

import re2
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from middlewared_plugin.errors import MatchNotFound, ValidationErrors

MAX_LIMIT = 10000
#: Bounds OR nesting so a hostile filter cannot exhaust the stack.
MAX_FILTER_DEPTH = 8
NULLS_FIRST = "nulls_first:"
NULLS_LAST = "nulls_last:"
REVERSE = "-"
CASE_INSENSITIVE = "C"


class _Missing:
    """The value of a path that does not exist (distinct from a stored null)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def _op_in(x: Any, y: Any) -> bool:
    return x in y


def _op_nin(x: Any, y: Any) -> bool:
    return x is not None and x not in y


def _op_rin(x: Any, y: Any) -> bool:
    return x is not None and y in x


def _op_rnin(x: Any, y: Any) -> bool:
    return x is not None and y not in x


@functools.lru_cache(maxsize=256)
def _regex(pattern: str, ignore_case: bool = False) -> Any:
    """A compiled RE2 pattern; raises ValueError with RE2's reason when it does not compile."""
    options = re2.Options()
    options.log_errors = False  # RE2 would print every rejected pattern to stderr
    options.case_sensitive = not ignore_case
    try:
        return re2.compile(pattern, options)
    except re2.error as e:
        reason = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ValueError(reason) from None


def _op_re(x: Any, y: str, ignore_case: bool = False) -> bool:
    # Nullable string fields match as the empty string (TrueNAS does the same).
    return _regex(y, ignore_case).match("" if x is None else x) is not None


def _string_op(test: Callable[[str, str], bool]) -> Callable[[Any, str], bool]:
    def op(x: Any, y: str) -> bool:
        return isinstance(x, str) and test(x, y)
    return op


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "~": _op_re,
    "in": _op_in,
    "nin": _op_nin,
    "rin": _op_rin,
    "rnin": _op_rnin,
    "^": _string_op(str.startswith),
    "!^": _string_op(lambda x, y: not x.startswith(y)),
    "$": _string_op(str.endswith),
    "!$": _string_op(lambda x, y: not x.endswith(y)),
}
_STRING_VALUE_OPS = {"~", "^", "!^", "$", "!$"}
_CONTAINER_VALUE_OPS = {"in", "nin"}


class QueryOptions(BaseModel):
    """The `options` argument of every query; strict and closed like TrueNAS's model."""

    model_config = ConfigDict(extra="forbid", strict=True)

    relationships: bool = True
    extend: str | None = None
    extend_context: str | None = None
    prefix: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    order_by: list[str] = Field(default_factory=list)
    select: list[str | list[str]] = Field(default_factory=list)
    count: bool = False
    get: bool = False
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=0, ge=0, le=MAX_LIMIT)
    force_sql_filters: bool = False


def _split_path(path: str) -> list[str]:
    """`a.b\\.c` -> ["a", "b.c"]."""
    parts = re.split(r"(?<!\\)\.", path)
    return [p.replace("\\.", ".") for p in parts]


class _Fanout(list):
    """Values gathered through a `*` path step; a filter matches if any of them does."""


def _resolve(obj: Any, parts: list[str]) -> Any:
    """Value at `parts`, MISSING, or (for a `*` step) a `_Fanout` of every element's value."""
    cur = obj
    for i, key in enumerate(parts):
        if isinstance(cur, dict):
            cur = cur.get(key, MISSING)
        elif isinstance(cur, list | tuple):
            if key == "*":
                return _Fanout(_resolve(elem, parts[i + 1:]) for elem in cur)
            if not key.isdigit():
                return MISSING
            idx = int(key)
            cur = cur[idx] if idx < len(cur) else MISSING
        elif isinstance(cur, datetime) and key == "$date":
            cur = int(cur.timestamp() * 1000)
        else:
            return MISSING
        if cur is MISSING:
            return MISSING
    return cur


def get_path(obj: Any, path: str) -> Any:
    """The value at dotted `path` in `obj`, or None when it does not exist."""
    value = _resolve(obj, _split_path(path))
    return None if value is MISSING else value


def _casefold(value: Any) -> Any:
    if isinstance(value, str):
        return value.casefold()
    if isinstance(value, list | tuple):
        return [_casefold(v) for v in value]
    return value


def _match_one(source: Any, op: str, value: Any) -> bool:
    if isinstance(source, _Fanout):
        return any(_match_one(s, op, value) for s in source)
    if source is MISSING:
        return False
    if op == "C~":
        # Folding the pattern would corrupt escapes such as \S, so the regex engine ignores case instead.
        return isinstance(source, str | None) and _op_re(source, value, ignore_case=True)
    if op.startswith(CASE_INSENSITIVE):
        op, source, value = op[1:], _casefold(source), _casefold(value)
    try:
        return bool(OPERATORS[op](source, value))
    except TypeError:
        # Incomparable types (None > 1, 5 in None ...) never match, like NULL in SQL.
        return False


def _matches(item: dict[str, Any], the_filter: Sequence[Any]) -> bool:
    if len(the_filter) == 2:
        # ["OR", [branch, ...]]; a branch that is a list of filters is a conjunction.
        return any(
            all(_matches(item, f) for f in branch) if _is_conjunction(branch) else _matches(item, branch)
            for branch in the_filter[1]
        )
    name, op, value = the_filter
    return _match_one(_resolve(item, _split_path(name)), op, value)


def _is_conjunction(branch: Sequence[Any]) -> bool:
    return bool(branch) and isinstance(branch[0], list | tuple)


def _check_filter(f: Any, attr: str, depth: int, errors: ValidationErrors) -> None:
    if depth > MAX_FILTER_DEPTH:
        errors.add(attr, f"Filters are nested too deeply (maximum depth {MAX_FILTER_DEPTH})")
        return
    if not isinstance(f, list | tuple):
        errors.add(attr, "Filter must be a list: [field, operator, value] or [\"OR\", [filter, ...]]")
        return
    if len(f) == 2:
        conj, branches = f
        if conj != "OR":
            errors.add(f"{attr}.0", f"Invalid conjunction {conj!r}: only \"OR\" is supported")
        elif not isinstance(branches, list | tuple) or not branches:
            errors.add(f"{attr}.1", "\"OR\" needs a non-empty list of filters")
        else:
            for i, branch in enumerate(branches):
                if isinstance(branch, list | tuple) and _is_conjunction(branch):
                    for j, sub in enumerate(branch):
                        _check_filter(sub, f"{attr}.1.{i}.{j}", depth + 1, errors)
                else:
                    _check_filter(branch, f"{attr}.1.{i}", depth + 1, errors)
        return
    if len(f) != 3:
        errors.add(attr, f"Filter must have 3 items ([field, operator, value]), found {len(f)}")
        return
    name, op, value = f
    if not isinstance(name, str) or not name:
        errors.add(f"{attr}.0", "Filter field must be a non-empty string")
    base_op = op[1:] if isinstance(op, str) and op.startswith(CASE_INSENSITIVE) else op
    if not isinstance(op, str) or base_op not in OPERATORS:
        errors.add(f"{attr}.1", f"Invalid operation: {op!r} (valid: {', '.join(OPERATORS)})")
        return
    if base_op in _STRING_VALUE_OPS and not isinstance(value, str):
        errors.add(f"{attr}.2", f"Operator {op!r} needs a string value")
    elif base_op == "~":
        try:
            _regex(value, op != base_op)
        except ValueError as e:
            errors.add(f"{attr}.2", f"Invalid regular expression: {e}")
    elif base_op in _CONTAINER_VALUE_OPS and not isinstance(value, list | tuple | str):
        errors.add(f"{attr}.2", f"Operator {op!r} needs a list value")


def validate_filters(filters: Any, attribute: str = "filters") -> list[Any]:
    """Raise ValidationErrors (attribute paths like `filters.0.1`) unless `filters` is well-formed."""
    errors = ValidationErrors()
    if not isinstance(filters, list | tuple):
        errors.add(attribute, "Filters must be a list")
    else:
        for i, f in enumerate(filters):
            _check_filter(f, f"{attribute}.{i}", 1, errors)
    errors.check()
    return list(filters)


def _parse_order(key: str) -> tuple[str, bool, Literal["first", "last"] | None]:
    """`nulls_last:-name` -> ("name", True, "last")."""
    nulls: Literal["first", "last"] | None = None
    if key.startswith(NULLS_FIRST):
        key, nulls = key[len(NULLS_FIRST):], "first"
    elif key.startswith(NULLS_LAST):
        key, nulls = key[len(NULLS_LAST):], "last"
    reverse = key.startswith(REVERSE)
    return key.removeprefix(REVERSE), reverse, nulls


def validate_options(options: Any, attribute: str = "options") -> QueryOptions:
    """Parse the options object; unknown keys and wrong types are ValidationErrors (`options.<key>`)."""
    if options is None:
        return QueryOptions()
    try:
        parsed = QueryOptions.model_validate(options)
    except PydanticValidationError as e:
        raise ValidationErrors(
            (".".join([attribute, *(str(p) for p in err["loc"])]), err["msg"], 22) for err in e.errors()
        ) from None
    errors = ValidationErrors()
    for i, key in enumerate(parsed.order_by):
        if not _parse_order(key)[0]:
            errors.add(f"{attribute}.order_by.{i}", f"{key!r} does not name a field")
    for i, sel in enumerate(parsed.select):
        if isinstance(sel, list) and (len(sel) != 2 or not all(sel)):
            errors.add(f"{attribute}.select.{i}", "A renaming select must be [field, new_name]")
        elif not sel:
            errors.add(f"{attribute}.select.{i}", "Selected field must be a non-empty string")
    errors.check()
    return parsed


def _order(items: list[dict[str, Any]], order_by: list[str]) -> list[dict[str, Any]]:
    # Stable sorts from the last key to the first make the first key the primary one.
    for key in reversed(order_by):
        field, reverse, nulls = _parse_order(key)
        nulls = nulls or ("last" if reverse else "first")
        values = [(get_path(item, field), item) for item in items]
        present = [(v, item) for v, item in values if v is not None]
        absent = [item for v, item in values if v is None]
        try:
            present.sort(key=lambda pair: pair[0], reverse=reverse)
        except TypeError:
            raise ValidationErrors(
                [("options.order_by", f"Cannot sort by {key!r}: its values are not comparable", 22)]
            ) from None
        ordered = [item for _, item in present]
        items = absent + ordered if nulls == "first" else ordered + absent
    return items


def _select(item: dict[str, Any], select: list[str | list[str]]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for sel in select:
        target, new_name = (sel[0], sel[1]) if isinstance(sel, list) else (sel, None)
        parts = _split_path(target)
        cur: Any = item
        for part in parts:
            cur = cur.get(part, MISSING) if isinstance(cur, dict) else MISSING
            if cur is MISSING:
                break
        if cur is MISSING:
            continue
        if new_name is not None:
            entry[new_name] = cur
            continue
        # "a.b" keeps only sub-key b of a: {"a": {"b": ...}}
        dest = entry
        for part in parts[:-1]:
            dest = dest.setdefault(part, {})
        dest[parts[-1]] = cur
    return entry


def filter_list(
    items: Iterable[dict[str, Any]],
    filters: list[Any] | None = None,
    options: dict[str, Any] | QueryOptions | None = None,
) -> list[dict[str, Any]] | dict[str, Any] | int:
    """Apply TrueNAS query `filters` and `options` to `items` (reference §1.11).

    Returns the list, one dict (`get`) or an int (`count`). Raises ValidationErrors for malformed
    arguments and MatchNotFound when `get` finds nothing.
    """
    opts = options if isinstance(options, QueryOptions) else validate_options(options)
    filters = validate_filters(filters or [])
    rv = [item for item in items if all(_matches(item, f) for f in filters)]
    if opts.count:
        return len(rv)
    rv = _order(rv, opts.order_by)
    if opts.get:
        if not rv:
            raise MatchNotFound()
        return _select(rv[0], opts.select) if opts.select else rv[0]
    rv = rv[opts.offset:]
    if opts.limit:
        rv = rv[:opts.limit]
    if opts.select:
        rv = [_select(item, opts.select) for item in rv]
    return rv
