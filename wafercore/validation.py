"""One validator per kind of input that crosses a tier's boundary: ids, timestamps, maps.

Every entry point (the edge's HTTP schemas and service, the G85 reader, the fab's gRPC and HTTP
APIs) calls these, so a value one tier accepts is a value every other tier stores. Each raises
`InvalidInput` naming the field and the reason; transports turn it into HTTP 422 or gRPC
INVALID_ARGUMENT.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from wafercore.encoding import from_wm811k
from wafercore.errors import InvalidInput

MAX_ID_CHARS = 128
"""Longest id (node, wafer, lot, user): the width of the fab's columns."""
MAX_SIDE = 512
"""Largest accepted number of rows or columns of a wafer map."""
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)
"""No wafer map in this platform's world was tested before this (a 0 or a 1970 is a bug)."""
MAX_CLOCK_AHEAD = timedelta(days=1)
"""How far a sender's clock may run ahead of the receiver's before its times are refused."""

CANONICAL = "canonical"
"""The platform's die encoding: 0 pass, 1 fail, 2 out of wafer."""
WM811K = "wm811k"
"""WM-811K's die encoding: 0 no die, 1 pass, 2 fail."""
ENCODINGS = (CANONICAL, WM811K)
"""Encoding names, indexed by the contract's ``DieEncoding`` number."""

_ALLOWED_BYTES = b"\x00\x01\x02"


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be an id, or None when it can.

    An id is 1 to 128 characters, not blank, without control characters (C0, DEL or C1: a NUL
    is refused by PostgreSQL, and terminal escapes would reach engineers' screens and logs).
    """
    if not isinstance(value, str):
        return "must be a string"
    if not value.strip():
        return "must not be blank"
    if len(value) > MAX_ID_CHARS:
        return f"has {len(value)} characters; at most {MAX_ID_CHARS}"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        return "must not contain control characters"
    if any(0xD800 <= ord(c) < 0xE000 for c in value):
        return "must not contain unpaired surrogates"
    return None


def check_id(value: str, field: str) -> str:
    """``value`` if it is a valid id (see `id_problem`).

    Raises:
        InvalidInput: naming ``field``.
    """
    problem = id_problem(value)
    if problem is not None:
        raise InvalidInput(field, problem)
    return value


def check_timestamp(value: object, field: str, *, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from an ISO 8601 string with a zone (or an aware datetime).

    Numbers are refused (``0`` is not a time a station means), as are times without a zone,
    before 2000, or more than a day ahead of ``now``.

    Args:
        value: ``"2026-08-31T10:42:15Z"``, ``"...+02:00"``, or an aware ``datetime``.
        field: the input's name, for the error.
        now: the receiver's clock (UTC); the current time by default.

    Raises:
        InvalidInput: naming ``field``.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInput(
                field, "must be an ISO 8601 date and time with a zone (2026-08-31T10:42:15Z)"
            ) from None
    else:
        raise InvalidInput(
            field, "must be an ISO 8601 string with a zone (2026-08-31T10:42:15Z), not a number"
        )
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise InvalidInput(field, "has no time zone; add Z or an offset like +02:00")
    return check_time_range(parsed.astimezone(UTC), field, now=now)


def check_time_range(value: datetime, field: str, *, now: datetime | None = None) -> datetime:
    """``value`` (aware) if it lies between 2000 and a day after ``now``.

    Raises:
        InvalidInput: naming ``field``.
    """
    now = datetime.now(UTC) if now is None else now
    if value < EARLIEST_TIMESTAMP:
        raise InvalidInput(field, f"is {value.isoformat()}, before {EARLIEST_TIMESTAMP.year}")
    if value > now + MAX_CLOCK_AHEAD:
        raise InvalidInput(
            field, f"is {value.isoformat()}, more than a day ahead of this server's clock"
        )
    return value


def check_map_shape(rows: int, cols: int, field: str) -> None:
    """Refuse a declared map size outside 1..512 per side, before anything is allocated.

    Raises:
        InvalidInput: naming ``field``.
    """
    if not 1 <= rows <= MAX_SIDE or not 1 <= cols <= MAX_SIDE:
        raise InvalidInput(field, f"is {rows}x{cols}; rows and cols must each be in 1..{MAX_SIDE}")


def check_encoding(value: int | str, field: str) -> str:
    """The encoding's name from a contract number (0, 1) or a name (``canonical``, ``wm811k``).

    Raises:
        InvalidInput: an unknown encoding, naming ``field``.
    """
    if isinstance(value, str) and value in ENCODINGS:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(ENCODINGS):
        return ENCODINGS[value]
    raise InvalidInput(field, f"{value!r} is not a known encoding ({', '.join(ENCODINGS)})")


def map_from_bytes(
    rows: int, cols: int, values: bytes, *, encoding: int | str, field: str
) -> npt.NDArray[np.uint8]:
    """A canonical (rows, cols) map from a contract ``WaferMap`` (one byte per die).

    Args:
        rows: declared rows.
        cols: declared columns.
        values: rows * cols bytes, row-major.
        encoding: ``DieEncoding`` number or name.
        field: where the map is in the request (``results[3].wafer_map``).

    Raises:
        InvalidInput: a side outside 1..512, a length other than rows * cols, an unknown
            encoding or a value outside {0, 1, 2}; the field is named.
    """
    check_map_shape(rows, cols, field)
    name = check_encoding(encoding, f"{field}.encoding")
    if len(values) != rows * cols:
        raise InvalidInput(
            f"{field}.values", f"has {len(values)} bytes, expected {rows * cols} ({rows}x{cols})"
        )
    arr = np.frombuffer(values, dtype=np.uint8)
    if values.translate(None, _ALLOWED_BYTES):  # some byte is outside {0, 1, 2}: say which
        bad = int(np.flatnonzero(arr > 2)[0])
        allowed = "0 no die, 1 pass, 2 fail" if name == WM811K else "0 pass, 1 fail, 2 out of wafer"
        raise InvalidInput(
            f"{field}.values", f"byte {bad} is {values[bad]}; allowed values are {allowed}"
        )
    grid = from_wm811k(arr) if name == WM811K else arr
    return grid.reshape(rows, cols)


# --- The same validators as pydantic types, for the HTTP schemas of every tier -------------


def valid_id(value: str) -> str:
    """`check_id` for pydantic (``AfterValidator``): the reason as the error's message."""
    problem = id_problem(value)
    if problem is not None:
        raise PydanticCustomError("invalid_id", problem)
    return value


def valid_time(value: Any) -> datetime:
    """`check_timestamp` for pydantic (``BeforeValidator``): the reason as the error's message."""
    try:
        return check_timestamp(value, "time")
    except InvalidInput as exc:
        raise PydanticCustomError("invalid_time", exc.reason) from None


Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(valid_id)]
"""An id in a request body (see `id_problem`)."""
ZonedTime = Annotated[datetime, BeforeValidator(valid_time)]
"""A time from outside: ISO 8601 with a zone, 2000 to a day ahead (see `check_timestamp`)."""
