"""``/ui/audit``: every verdict with who, when and from what to what; ``/ui/audit.csv`` exports it.

Filters are GET parameters ``wafer`` and ``user``; the CSV takes the same ones, so the export
is what the page shows (up to `CSV_ROWS` verdicts rather than a page).
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from fab_server.services import audit
from review_ui.session import User, context
from review_ui.templating import PAGE_HEADERS, render
from wafercore.validation import id_problem

router = APIRouter()

PAGE_ROWS = 500
CSV_ROWS = audit.MAX_AUDIT_ROWS


def _filters(request: Request) -> dict[str, str]:
    """The valid ``wafer``/``user`` filters of the request (invalid ones are dropped)."""
    out = {}
    for name in ("wafer", "user"):
        value = request.query_params.get(name, "").strip()
        if value and id_problem(value) is None:
            out[name] = value
    return out


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(request: Request, _: User) -> HTMLResponse:
    """The latest verdicts, newest first, of one wafer and/or one user when filtered."""
    filters = _filters(request)
    entries = await audit.audit_trail(
        context(request).sessions,
        wafer_id=filters.get("wafer"),
        user=filters.get("user"),
        limit=PAGE_ROWS,
    )
    query = "?" + urlencode(filters) if filters else ""
    return render(
        request,
        "audit.html",
        entries=entries,
        filters=filters,
        csv_href="/ui/audit.csv" + query,
        page_rows=PAGE_ROWS,
        class_name=audit.class_name,
        is_override=audit.is_override,
    )


@router.get("/audit.csv")
async def audit_csv(request: Request, _: User) -> Response:
    """The verdicts as CSV, same filters as the page, downloaded as a file."""
    filters = _filters(request)
    entries = await audit.audit_trail(
        context(request).sessions,
        wafer_id=filters.get("wafer"),
        user=filters.get("user"),
        limit=CSV_ROWS,
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = {
        **PAGE_HEADERS,
        "Content-Disposition": f'attachment; filename="audit-{stamp}.csv"',
    }
    return Response(audit.audit_csv(entries), media_type="text/csv; charset=utf-8", headers=headers)
