"""The queue's filters as GET parameters, shared by the queue page and the wafer view.

The wafer view keeps the queue's filters in its URLs, so J/K and "next after a verdict" move
through the same filtered queue the engineer opened the item from. Unknown or malformed values
are dropped (a hand-edited URL shows the whole queue rather than an error page).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from fastapi import Request

from fab_server import domain
from wafercore.classes import CLASS_NAMES
from wafercore.validation import id_problem

REASONS: dict[str, domain.ReviewReason] = {
    "low_confidence": domain.ReviewReason.LOW_CONFIDENCE,
    "novelty": domain.ReviewReason.NOVELTY,
    "manual": domain.ReviewReason.MANUAL,
    "canary_sample": domain.ReviewReason.CANARY_SAMPLE,
}
"""GET value of each reason (the API's names)."""

REASON_LABELS: dict[domain.ReviewReason, str] = {
    domain.ReviewReason.UNSPECIFIED: "unspecified",
    domain.ReviewReason.LOW_CONFIDENCE: "low confidence",
    domain.ReviewReason.NOVELTY: "novel",
    domain.ReviewReason.MANUAL: "manual flag",
    domain.ReviewReason.CANARY_SAMPLE: "canary sample",
}
"""How each reason reads on a page."""


@dataclass(frozen=True)
class QueueFilters:
    """The filters of one queue view; empty strings mean "any"."""

    reason: str = ""
    lot: str = ""
    node: str = ""
    model: str = ""
    cls: str = ""  # a class id as text

    @classmethod
    def from_request(cls, request: Request) -> QueueFilters:
        """The valid filters among the request's query parameters."""
        params = request.query_params
        reason = params.get("reason", "")
        klass = params.get("cls", "")
        return cls(
            reason=reason if reason in REASONS else "",
            lot=_ident(params.get("lot", "")),
            node=_ident(params.get("node", "")),
            model=_ident(params.get("model", "")),
            cls=klass if klass.isdigit() and int(klass) < len(CLASS_NAMES) else "",
        )

    def to_domain(self) -> domain.ReviewFilter:
        """The service's filter."""
        return domain.ReviewFilter(
            reason=REASONS[self.reason] if self.reason else None,
            lot_id=self.lot or None,
            node_id=self.node or None,
            model_version=self.model or None,
            predicted_class=int(self.cls) if self.cls else None,
        )

    def query(self) -> str:
        """``?reason=...`` with the set filters, or an empty string."""
        pairs = {
            k: v
            for k, v in (
                ("reason", self.reason),
                ("lot", self.lot),
                ("node", self.node),
                ("model", self.model),
                ("cls", self.cls),
            )
            if v
        }
        return "?" + urlencode(pairs) if pairs else ""

    @property
    def active(self) -> bool:
        """Whether any filter is set."""
        return bool(self.query())


def _ident(value: str) -> str:
    value = value.strip()
    return value if value and id_problem(value) is None else ""
