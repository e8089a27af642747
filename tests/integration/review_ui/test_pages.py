"""The lots, alerts, models & nodes and audit pages in real Chromium against a real fab server.

The lot page's stacked map covers the lot's wafers; only an admin can acknowledge an alert
(an engineer sees no button and a forged POST is refused with 403); the audit trail and its
CSV hold every verdict made, through the API and through the UI. Each page is screenshotted
(checked not blank) and checked by axe-core for serious or critical violations.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from tests.integration.conftest import ENGINEER, ENGINEER_TOKEN
from tests.integration.review_ui.conftest import (
    ADMIN,
    UiFab,
    assert_accessible,
    keys_ready,
    sign_in,
)
from wafercore.classes import CLASS_NAMES

pytestmark = pytest.mark.integration

Shot = Callable[[Page, str], Path]
NewPage = Callable[..., Page]


def _biggest_lot(fab: UiFab) -> tuple[str, int]:
    """The lot with the most wafers, and how many it has."""
    rows = fab.query(
        "SELECT lot_id, count(*) FROM results GROUP BY lot_id ORDER BY count(*) DESC, lot_id"
    )
    return str(rows[0][0]), int(rows[0][1])


def test_lot_pages_show_the_lots_wafers_and_stacked_map(
    ui_fab: UiFab, new_page: NewPage, screenshot: Shot
) -> None:
    page = new_page()
    sign_in(page, ui_fab, "ana")
    page.get_by_role("link", name="Lots", exact=True).click()
    expect(page).to_have_url(re.compile(r"/ui/lots$"))
    lots = ui_fab.query("SELECT lot_id FROM lots")
    expect(page.locator("#lots-table tbody tr")).to_have_count(len(lots))
    screenshot(page, "lots")
    assert_accessible(page)

    lot_id, wafers = _biggest_lot(ui_fab)
    page.locator(f'#lots-table tr[data-lot="{lot_id}"] a').click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Lot {lot_id}")
    expect(page.locator("#lot-wafers")).to_have_text(str(wafers))
    expect(page.locator("#wafer-gallery > li")).to_have_count(wafers)
    # The stacked map holds every mapped wafer of the lot's commonest map shape, and says how
    # many of the lot's wafers it left out (another shape, or no map): together, the lot.
    shapes = ui_fab.query(
        "SELECT m.rows, m.cols, count(*) FROM results r JOIN wafer_maps m"
        " ON m.node_id = r.node_id AND m.sequence = r.sequence WHERE r.lot_id = %s"
        " GROUP BY m.rows, m.cols ORDER BY count(*) DESC",
        lot_id,
    )
    stacked = int(shapes[0][2])
    mapped = sum(int(n) for _, _, n in shapes)
    if ui_fab.real_data:  # a real lot's wafers share their product's die layout
        assert stacked == wafers
    figure = page.locator("#stacked-map")
    expect(page.locator("#stacked-count")).to_have_text(str(stacked))
    expect(figure).to_have_attribute("data-stacked", str(stacked))
    expect(figure).to_have_attribute("data-left-out", str(mapped - stacked))
    expect(figure).to_have_attribute("data-without-map", str(wafers - mapped))
    if mapped > stacked:
        expect(figure).to_contain_text(f"{mapped - stacked} wafer")
    stacked_svg = page.locator("#stacked-map svg[role=img]")
    expect(stacked_svg).to_have_attribute("aria-label", re.compile(f"over {stacked} wafers?$"))
    drawn = (stacked_svg.get_attribute("data-rows"), stacked_svg.get_attribute("data-cols"))
    commonest = {(str(r), str(c)) for r, c, n in shapes if n == stacked}  # ties: any of them
    assert drawn in commonest
    _hover_shows_a_cell(page, stacked_svg)
    # The die-yield trend has a point per wafer, the class mix a row per predicted class.
    expect(page.locator("#yield-trend circle.point")).to_have_count(wafers)
    classes = ui_fab.query(
        "SELECT prediction FROM results WHERE lot_id = %s GROUP BY prediction", lot_id
    )
    expect(page.locator("#class-mix tbody tr")).to_have_count(len(classes))
    expect(page.locator("#excursion-flag")).to_be_visible()
    screenshot(page, "lot")
    assert_accessible(page)

    wide = new_page(width=1920, height=1080)
    sign_in(wide, ui_fab, "ana")
    wide.goto(f"{ui_fab.url}/ui/lots/{lot_id}")
    expect(wide.locator("#stacked-map svg")).to_be_visible()
    screenshot(wide, "lot-1920")
    missing = wide.goto(f"{ui_fab.url}/ui/lots/NO-SUCH-LOT")
    assert missing is not None and missing.status == 404
    expect(wide.get_by_role("heading", level=1)).to_have_text("Lot not found")

    _models_page(page, ui_fab)
    screenshot(page, "models")
    assert_accessible(page)


def _hover_shows_a_cell(page: Page, svg: Locator) -> None:
    """The pointer over the middle of a map names its row, column and fail rate."""
    box = svg.bounding_box()
    assert box is not None
    if "wafer-hover" in (svg.get_attribute("class") or ""):  # a large map: the script's tip
        rows = int(svg.get_attribute("data-rows") or 0)
        cols = int(svg.get_attribute("data-cols") or 1)
        map_height = box["width"] * rows / cols  # the legend is drawn below the map
        svg.hover(position={"x": box["width"] / 2, "y": map_height / 2})
        tip = page.locator(".wafer-tip")
        expect(tip).to_be_visible()
        expect(tip).to_have_text(re.compile(r"^row \d+, col \d+: \d+-\d+% fail$"))
    else:  # a small map: a title on every die
        expect(svg.locator("rect title").first).to_have_text(re.compile(r"row \d+, col \d+: "))


def _models_page(page: Page, fab: UiFab) -> None:
    """A metrics window and a default assignment show up on the seed node's row."""
    (node_id,) = fab.query("SELECT node_id FROM edge_nodes")[0]
    fab.query(
        "INSERT INTO edge_metrics (node_id, window_start, window_end, wafers_classified,"
        " throughput_per_minute, latency_p50_ms, latency_p90_ms, latency_p99_ms,"
        " avg_recursion_steps, review_rate, model_version, outbox_depth, confidence_edges,"
        " confidence_counts, class_counts, received_at) VALUES (%s, now() - interval '2 min',"
        " now() - interval '1 min', 123, 123.4, 1.0, 2.0, 5.6, 1.0, 0.125, 'cnn-v2.0.0', 0,"
        " '[]', '[]', '[]', now()) RETURNING id",
        node_id,
    )
    fab.query(
        "INSERT INTO model_assignments (node_id, version, rollout_id, stage, rollback,"
        " updated_at) VALUES ('*', 'cnn-v2.0.0', '', 0, false, now()) RETURNING node_id"
    )
    page.get_by_role("link", name="Models & nodes").click()
    nodes = fab.query("SELECT node_id FROM edge_nodes")
    expect(page.locator("#nodes-table tbody tr")).to_have_count(len(nodes))
    row = page.locator(f'#nodes-table tr[data-node="{node_id}"]')
    expect(row.locator("td.num")).to_have_text(["123.4", "5.6", "12.5%"])
    expect(row).to_contain_text("cnn-v2.0.0")
    expect(row).to_contain_text("default")
    expect(row.locator("td.rollout")).to_contain_text("cloud rollout: not available yet")
    expect(page.locator("#default-assignment")).to_contain_text("cnn-v2.0.0")


def _add_alert(fab: UiFab, subject: str, severity: str, state: str) -> int:
    rows = fab.query(
        "INSERT INTO alerts (kind, severity, subject, message, state, created_at, updated_at)"
        " VALUES ('lot_excursion', %s, %s, %s, %s, now(), now()) RETURNING id",
        severity,
        subject,
        f"test alert on {subject}",
        state,
    )
    return int(rows[0][0])


def test_only_an_admin_acknowledges_an_alert(
    ui_fab: UiFab, new_page: NewPage, screenshot: Shot
) -> None:
    open_id = _add_alert(ui_fab, "lot LOT-X", "critical", "active")
    _add_alert(ui_fab, "node edge-9", "warning", "resolved")

    engineer = new_page()
    sign_in(engineer, ui_fab, "ana")
    engineer.get_by_role("link", name="Alerts").click()
    row = engineer.locator(f'#open-alerts tr[data-alert="{open_id}"]')
    expect(row).to_contain_text("lot LOT-X")
    expect(row).to_contain_text("critical")
    expect(engineer.locator("#alert-history")).to_contain_text("node edge-9")
    expect(engineer.get_by_role("button", name=re.compile("Acknowledge"))).to_have_count(0)
    # A forged POST with a valid session and CSRF token is still refused: the role decides.
    token = engineer.locator('meta[name="csrf-token"]').get_attribute("content")
    refused = engineer.request.post(
        f"{ui_fab.url}/ui/alerts/{open_id}/ack",
        form={"csrf_token": token or ""},
        max_redirects=0,
    )
    assert refused.status == 403
    assert ui_fab.query("SELECT state FROM alerts WHERE id = %s", open_id) == [("active",)]
    screenshot(engineer, "alerts-engineer")
    assert_accessible(engineer)

    admin = new_page()
    sign_in(admin, ui_fab, ADMIN)
    admin.goto(f"{ui_fab.url}/ui/alerts")
    forged = admin.request.post(f"{ui_fab.url}/ui/alerts/{open_id}/ack", max_redirects=0)
    assert forged.status == 403  # an admin's session, but no CSRF token
    assert ui_fab.query("SELECT state FROM alerts WHERE id = %s", open_id) == [("active",)]
    admin.get_by_role("button", name="Acknowledge alert on lot LOT-X").click()
    expect(admin.locator("p.notice")).to_have_text("Alert acknowledged.")
    expect(admin.locator(f'#open-alerts tr[data-alert="{open_id}"]')).to_contain_text(
        f"acknowledged by {ADMIN}"
    )
    assert ui_fab.query("SELECT state, acknowledged_by FROM alerts WHERE id = %s", open_id) == [
        ("acknowledged", ADMIN)
    ]
    screenshot(admin, "alerts-admin")
    assert_accessible(admin)


def _api_verdicts(fab: UiFab) -> None:
    """Two verdicts by the API's engineer: a confirmation and a relabel."""
    auth = {"Authorization": f"Bearer {ENGINEER_TOKEN}"}
    with httpx.Client(base_url=fab.url, headers=auth, timeout=30) as api:
        for outcome in ("confirmed", "relabelled"):
            item = api.post("/api/review/claim").json()
            predicted = int(item["predicted_class"])
            body: dict[str, object] = {"outcome": outcome, "true_label": predicted}
            if outcome == "relabelled":
                body["true_label"] = (predicted + 1) % len(CLASS_NAMES)
            done = api.post(f"/api/review/items/{item['id']}/resolve", json=body)
            assert done.status_code == 200, done.text


def test_the_audit_trail_and_its_csv_have_the_verdicts_made(
    ui_fab: UiFab, new_page: NewPage, screenshot: Shot
) -> None:
    _api_verdicts(ui_fab)
    page = new_page()
    sign_in(page, ui_fab, "ana")
    page.locator("#start-review").click()
    expect(page.locator("#verdict-form")).to_be_visible()
    first = page.url
    keys_ready(page)
    page.keyboard.press("u")  # unusable, through the UI
    expect(page).not_to_have_url(first)
    labels = ui_fab.query(
        "SELECT review_item_id, resolved_by, outcome, predicted_class, true_label, wafer_id"
        " FROM labels ORDER BY resolved_at DESC, id DESC"
    )
    assert [label[1] for label in labels] == ["ana", ENGINEER, ENGINEER]

    page.get_by_role("link", name="Audit").click()
    expect(page.locator("#audit-table tbody tr")).to_have_count(3)
    page.get_by_label("User", exact=True).fill("ana")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#audit-table tbody tr")).to_have_count(1)
    expect(page.locator("#audit-table tbody tr")).to_contain_text("unusable")
    page.locator("#audit-table tbody tr a").nth(1).click()  # the wafer's own trail
    expect(page).to_have_url(re.compile(r"wafer="))
    expect(page.locator("#audit-table tbody tr")).to_have_count(1)
    screenshot(page, "audit")
    assert_accessible(page)

    page.goto(f"{ui_fab.url}/ui/audit")
    with page.expect_download() as download:
        page.locator("#audit-csv").click()
    text = Path(download.value.path()).read_text(encoding="utf-8")
    exported = list(csv.DictReader(io.StringIO(text)))
    assert [
        (r["review_item_id"], r["resolved_by"], r["outcome"], r["wafer_id"]) for r in exported
    ] == [(item, user, outcome, wafer) for item, user, outcome, _, _, wafer in labels]
    for row, (_, _, _, predicted, true_label, _) in zip(exported, labels, strict=True):
        assert row["from_class"] == CLASS_NAMES[predicted]
        assert row["to_class"] == ("" if true_label is None else CLASS_NAMES[true_label])
    relabelled = next(r for r in exported if r["outcome"] == "relabelled")
    assert relabelled["from_class"] != relabelled["to_class"]
