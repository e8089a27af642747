"""The review UI in real Chromium against a real fab server on PostgreSQL.

Sign-in, the queue's order, the wafer view's keys (digits, Enter, U, J, K, ?) with every
verdict checked in the labels table, claims that a second engineer cannot take, CSRF, sign-out,
screenshots and an axe-core accessibility check of each page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.integration.conftest import ENGINEER_TOKEN
from tests.integration.review_ui.conftest import (
    PASSWORD,
    UiFab,
    assert_accessible,
    keys_ready,
    sign_in,
)

pytestmark = pytest.mark.integration

Shot = Callable[[Page, str], Path]
NewPage = Callable[..., Page]


def _queue_order(fab: UiFab) -> list[str]:
    rows = fab.query(
        "SELECT id FROM review_items WHERE state = 'open' ORDER BY priority, created_at, id"
    )
    return [r[0] for r in rows]


def _item_id(page: Page) -> str:
    match = re.search(r"/ui/review/([0-9a-f-]{36})", page.url)
    assert match, page.url
    return match.group(1)


def _label(fab: UiFab, item_id: str) -> tuple[str, int | None, str] | None:
    rows = fab.query(
        "SELECT outcome, true_label, resolved_by FROM labels WHERE review_item_id = %s", item_id
    )
    return rows[0] if rows else None


def _predicted(fab: UiFab, item_id: str) -> int:
    return int(fab.query("SELECT predicted_class FROM review_items WHERE id = %s", item_id)[0][0])


def _next_item(page: Page, previous: str, *, scripts: bool = True) -> str:
    """Wait until the wafer view shows another item than ``previous``; its id."""
    expect(page).not_to_have_url(re.compile(previous))
    expect(page).to_have_url(re.compile(r"/ui/review/"))
    expect(page.locator("#verdict-form")).to_be_visible()
    if scripts:
        keys_ready(page)
    return _item_id(page)


def _judge_with_keys(page: Page, fab: UiFab, order: list[str]) -> None:
    """Digit, Enter, U, J and K on the queue's first items, each checked in the database."""
    # A digit relabels to that class (key n is class n-1), and the next item opens.
    first = order[0]
    target = (_predicted(fab, first) + 1) % 9
    page.keyboard.press(str(target + 1))
    second = _next_item(page, first)
    assert _label(fab, first) == ("relabelled", target, "ana")
    assert second == order[1]

    page.keyboard.press("Enter")  # confirm the prediction
    third = _next_item(page, second)
    assert _label(fab, second) == ("confirmed", _predicted(fab, second), "ana")

    page.keyboard.press("u")  # unusable
    fourth = _next_item(page, third)
    assert _label(fab, third) == ("unusable", None, "ana")

    page.keyboard.press("j")  # skip: no verdict, the claim is given back
    fifth = _next_item(page, fourth)
    assert _label(fab, fourth) is None
    assert fab.query("SELECT state FROM review_items WHERE id = %s", fourth) == [("open",)]
    page.keyboard.press("k")  # back to the skipped one
    assert _next_item(page, fifth) == fourth


def test_sign_in_then_work_the_queue_with_the_keyboard(
    ui_fab: UiFab, new_page: NewPage, screenshot: Shot
) -> None:
    page = new_page()
    page.goto(f"{ui_fab.url}/ui/queue")
    expect(page).to_have_url(re.compile(r"/ui/login"))  # not signed in
    screenshot(page, "login")
    assert_accessible(page)
    page.get_by_label("User name").fill("ana")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-error")).to_have_text(re.compile("unknown user name or wrong"))
    sign_in(page, ui_fab, "ana")

    order = _queue_order(ui_fab)
    first_row = page.locator("#queue-table tbody tr").first
    expect(first_row).to_have_attribute("data-item", order[0])
    # Most urgent first: the lowest priority, which is the confidence, or lower for a wafer the
    # novelty model found novel (a confident but novel wafer is reviewed before unsure ones).
    (first,) = ui_fab.query("SELECT confidence FROM review_items WHERE id = %s", order[0])
    expect(first_row).to_contain_text(f"{first[0] * 100:.1f}%")
    screenshot(page, "queue")
    assert_accessible(page)

    page.locator("#start-review").click()
    expect(page).to_have_url(re.compile(order[0]))
    expect(page.locator("#claim")).to_contain_text("ana")
    assert ui_fab.query("SELECT claimed_by FROM review_items WHERE id = %s", order[0]) == [("ana",)]
    expect(page.locator("svg[role=img]").first).to_be_visible()
    expect(page.locator("#top-classes li")).to_have_count(3)
    # The lot's other wafers arrive after the page is shown.
    expect(page.locator("#lot-wafers")).not_to_contain_text("for its wafer gallery")
    # So do the novelty heatmap (the default model ships a novelty model) and similar wafers.
    novelty = page.locator("#novelty")
    expect(novelty).to_contain_text("Similar past wafers")
    expect(novelty.locator(".novelty-heat svg[role=img]")).to_be_visible()
    expect(novelty.locator(".similar li").first).to_be_visible()
    keys_ready(page)
    screenshot(page, "review")
    assert_accessible(page)

    _judge_with_keys(page, ui_fab, order)

    page.keyboard.press("?")
    expect(page.locator("#keys-dialog")).to_be_visible()
    expect(page.locator("#keys-dialog")).to_contain_text("Confirm the prediction")
    page.keyboard.press("Escape")
    expect(page.locator("#keys-dialog")).to_be_hidden()


def test_every_action_works_by_mouse_without_javascript(ui_fab: UiFab, new_page: NewPage) -> None:
    page = new_page(1920, 1080)
    page.context.route("**/*.js", lambda route: route.abort())  # no script at all
    sign_in(page, ui_fab, "ben")
    page.locator("#start-review").click()
    first = _item_id(page)
    page.get_by_role("button", name="Unusable").click()
    second = _next_item(page, first, scripts=False)
    expect(page.locator("html[data-keys=ready]")).to_have_count(0)  # really no script
    page.get_by_role("button", name=re.compile("Next")).click()
    assert _next_item(page, second, scripts=False) != second
    assert _label(ui_fab, second) is None
    assert _label(ui_fab, first) == ("unusable", None, "ben")


def test_a_second_engineer_cannot_take_a_claimed_item(
    ui_fab: UiFab, new_page: NewPage, screenshot: Shot
) -> None:
    ana, ben = new_page(), new_page()
    sign_in(ana, ui_fab, "ana")
    ana.locator("#start-review").click()
    item = _item_id(ana)

    sign_in(ben, ui_fab, "ben")
    expect(ben.locator("#claims-table")).to_contain_text("ana")
    ben.goto(f"{ui_fab.url}/ui/review/{item}")
    expect(ben.locator("#review-problem")).to_contain_text("being reviewed by ana")
    expect(ben.locator("#verdict-form")).to_have_count(0)
    screenshot(ben, "claimed-elsewhere")
    # Even a hand-made POST with a valid token cannot judge it.
    token = ben.locator('meta[name="csrf-token"]').get_attribute("content") or ""
    answer = ben.request.post(
        f"{ui_fab.url}/ui/review/{item}/verdict",
        form={"choice": "unusable", "csrf_token": token},
        max_redirects=0,
    )
    assert answer.status == 409
    assert _label(ui_fab, item) is None
    assert ui_fab.query("SELECT claimed_by FROM review_items WHERE id = %s", item) == [("ana",)]


def test_a_post_without_the_csrf_token_is_refused(ui_fab: UiFab, new_page: NewPage) -> None:
    page = new_page()
    sign_in(page, ui_fab, "ana")
    page.locator("#start-review").click()
    item = _item_id(page)
    url = f"{ui_fab.url}/ui/review/{item}/verdict"
    for form in ({"choice": "unusable"}, {"choice": "unusable", "csrf_token": "forged"}):
        refused = page.request.post(url, form=form, max_redirects=0)
        assert refused.status == 403
    assert _label(ui_fab, item) is None
    login = page.request.post(
        f"{ui_fab.url}/ui/login", form={"user": "ana", "password": PASSWORD}, max_redirects=0
    )
    assert login.status == 403
    token = page.locator('meta[name="csrf-token"]').get_attribute("content") or ""
    accepted = page.request.post(
        url, headers={"X-CSRF-Token": token}, form={"choice": "unusable"}, max_redirects=0
    )
    assert accepted.status == 303
    assert _label(ui_fab, item) == ("unusable", None, "ana")


def test_sign_out_ends_the_session_and_bearer_tokens_stay_for_machines(
    ui_fab: UiFab, new_page: NewPage
) -> None:
    page = new_page()
    sign_in(page, ui_fab, "ana")
    cookie = next(c for c in page.context.cookies() if c["name"] == "wafer_ui")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/ui/login"))
    page.goto(f"{ui_fab.url}/ui/queue")
    expect(page).to_have_url(re.compile(r"/ui/login"))

    api = httpx.get(
        f"{ui_fab.url}/api/review/items",
        headers={"Authorization": f"Bearer {ENGINEER_TOKEN}"},
        timeout=30,
    )
    assert api.status_code == 200 and len(api.json()) > 0
    # A bearer token is no UI session: the UI still asks to sign in.
    ui = httpx.get(
        f"{ui_fab.url}/ui/queue",
        headers={"Authorization": f"Bearer {ENGINEER_TOKEN}"},
        timeout=30,
    )
    assert ui.status_code == 303 and ui.headers["location"].startswith("/ui/login")


def test_the_seeded_wafers_are_real_wm811k_maps(ui_fab: UiFab) -> None:
    if not ui_fab.real_data:
        pytest.skip("no WAFER_DATA_DIR with sample_stratified.npz: the wafers seeded are synthetic")
    lots = ui_fab.query("SELECT DISTINCT lot_id FROM results")
    assert lots and all(lot.startswith("WM-lot") for (lot,) in lots)
