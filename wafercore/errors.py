"""The one error type wafercore raises for bad input from outside (ids, times, maps, files)."""

from __future__ import annotations


class InvalidInput(ValueError):
    """An input that cannot be used, with the field at fault and the reason.

    Transports turn it into HTTP 422 or gRPC INVALID_ARGUMENT with ``field`` and ``reason``.

    Attributes:
        field: dotted path of the offending input (``wafer_map``, ``wafer_map[3]``).
        reason: what is wrong, in words a user can act on.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
