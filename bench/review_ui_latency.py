"""Benchmark: the review UI's keypress -> next wafer shown, in headless Chromium.

Goal (issue 12): p95 under 150 ms with 100k results in the database. A fab server (gRPC, HTTP
API and UI, as `wafer-fab serve` runs it) on a scratch PostgreSQL schema is seeded with
synthetic wafers classified by the shipped model (``--results``; about one in ten lands in the
review queue at the default threshold). An engineer signs in, opens the most uncertain item
and judges ``--verdicts`` wafers with the keyboard (Enter confirms, a digit relabels, U marks
unusable, in turn). Each time is from the key press until the next item's page has been
parsed (DOMContentLoaded): the POST, the redirect, the next item's claim and its page.
The schema is dropped at the end.

    .venv/bin/python bench/review_ui_latency.py                      # seeds 100k: minutes
    .venv/bin/python bench/review_ui_latency.py --results 5000 --verdicts 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import uuid
from typing import Any

import numpy as np
import psycopg
from playwright.sync_api import Page, sync_playwright
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from fab_server.app import FabServer
from fab_server.db import make_async_engine, migrate, session_factory
from fab_server.services import seed, users
from fab_server.services.classify import Classifier
from fab_server.settings import FabSettings

LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "bench-review-pass"
KEYS = ("Enter", "3", "u", "Enter", "7")


async def _seed(settings: FabSettings, count: int) -> int:
    engine = make_async_engine(settings.database_url, settings.db_schema)
    sessions = session_factory(engine)
    try:
        started = time.perf_counter()
        classifier = Classifier(settings.model_dir)
        outcome = await seed.seed_synthetic(
            sessions, classifier, settings=settings, count=count, batch_size=1000
        )
        print(f"seeded {outcome.accepted:,} results in {time.perf_counter() - started:.0f} s")
        await users.add_user(sessions, user="bench", role="engineer", password=PASSWORD)
        return outcome.accepted
    finally:
        await engine.dispose()


def _sign_in(page: Page, base: str) -> None:
    page.goto(f"{base}/ui/login")
    page.get_by_label("User name").fill("bench")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/queue")
    page.locator("#start-review").click()
    page.wait_for_selector("#verdict-form")


# The browser's own account of the last navigation: request start to last byte (server, both
# hops of POST -> 303 -> GET), and last byte to DOMContentLoaded (parsing, scripts).
_NAV_TIMING = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  return [nav.responseEnd - nav.startTime, nav.domContentLoadedEventEnd - nav.responseEnd];
}"""


def _time_verdicts(page: Page, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Wall time per keypress (ms), and the browser's (server, parse) split of each."""
    times, splits = [], []
    for n in range(count):
        key = KEYS[n % len(KEYS)]
        started = time.perf_counter()
        with page.expect_navigation(wait_until="domcontentloaded"):
            page.keyboard.press(key)
        times.append((time.perf_counter() - started) * 1000)
        splits.append(page.evaluate(_NAV_TIMING))
        if page.locator("#verdict-form").count() == 0:
            raise RuntimeError(f"no item to judge after verdict {n + 1}: {page.url}")
    return np.array(times), np.array(splits)


def _run_browser(base: str, verdicts: int) -> tuple[np.ndarray, np.ndarray]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
        _sign_in(page, base)
        _time_verdicts(page, 5)  # warm-up: first pages, connection pools
        measured = _time_verdicts(page, verdicts)
        browser.close()
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    configured = os.environ.get("FAB_DATABASE_URL", "")
    default_url = configured if configured.startswith("postgresql") else LOCAL_POSTGRES
    parser.add_argument("--database-url", default=default_url, help="SQLAlchemy URL (psycopg)")
    parser.add_argument("--results", type=int, default=100_000, help="results seeded")
    parser.add_argument("--verdicts", type=int, default=200, help="keypresses timed")
    args = parser.parse_args()
    schema = f"bench_ui_{uuid.uuid4().hex[:8]}"
    settings = FabSettings(
        database_url=args.database_url,
        db_schema=schema,
        grpc_port=0,
        http_port=0,
        ui_session_secret=SecretStr("bench-secret"),
    )
    dsn = make_url(args.database_url).set(drivername="postgresql").render_as_string(False)
    migrate(settings.database_url, schema=schema)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(work: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(work, loop).result()

    try:
        on_loop(_seed(settings, args.results))
        server = on_loop(FabServer(settings).start())
        try:
            times, splits = _run_browser(f"http://127.0.0.1:{server.http_port}", args.verdicts)
        finally:
            on_loop(server.stop())
        with psycopg.connect(dsn) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            stored = conn.execute("SELECT count(*) FROM results").fetchone()
            queued = conn.execute("SELECT count(*) FROM review_items").fetchone()
        p50, p95, p99 = np.percentile(times, [50, 95, 99])
        print(
            f"database: {stored[0] if stored else 0:,} results, "
            f"{queued[0] if queued else 0:,} review items"
        )
        print(
            f"keypress -> next item shown, {len(times)} verdicts: p50 {p50:.1f} ms, "
            f"p95 {p95:.1f} ms, p99 {p99:.1f} ms, max {times.max():.1f} ms (goal: p95 < 150 ms)"
        )
        server_ms, parse_ms = np.median(splits, axis=0)
        print(
            f"  median split (browser's navigation timing): request to last byte "
            f"{server_ms:.1f} ms, last byte to DOMContentLoaded {parse_ms:.1f} ms"
        )
    finally:
        loop.call_soon_threadsafe(loop.stop)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
