"""Browser fixtures of the review UI: a real fab server on PostgreSQL with classified wafers,
its users, and headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

Seeded wafers are real WM-811K maps (``sample_stratified.npz`` under ``WAFER_DATA_DIR``) when
configured, else synthetic ones; both are classified by the shipped model. Every result is
queued for review (threshold 1.0), so the queue's order is the model's own confidence.

Screenshots go to ``$TEST_ARTIFACTS_DIR`` (CI keeps them) or the test's tmp dir, and
`screenshot` fails on a blank page (one colour over nearly all pixels).
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from axe_playwright_python.sync_playwright import Axe
from PIL import Image
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright
from pydantic import SecretStr

from fab_server.app import FabServer
from fab_server.db import make_async_engine, session_factory
from fab_server.services import seed, users
from fab_server.services.classify import Classifier
from fab_server.settings import FabSettings
from wafercore.readers.npz import read_npz

CHROMIUM = Path("/usr/bin/chromium")
WAFERS = 30
PASSWORD = "review-ui-test-pass"
ENGINEERS = ("ana", "ben")
ADMIN = "boss"
START_S = 120.0
# Playwright's expect() waits up to this for a condition: a loaded 2-core machine is slow.
expect.set_options(timeout=20_000)


@dataclass
class UiFab:
    """A running fab server with seeded wafers and users."""

    url: str  # http://127.0.0.1:PORT
    settings: FabSettings
    real_data: bool  # the wafers are WM-811K maps (else synthetic)
    pg_url: str

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` in the fab's schema (assertions read the database directly)."""
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{self.settings.db_schema}"')
            return list(conn.execute(sql, params).fetchall())


@pytest.fixture(scope="module")
def playwright_session() -> Iterator[Playwright]:
    """Playwright itself (sync API), started once per module.

    Not per session: while it runs, the sync API keeps an event loop running in this thread,
    which would break every asyncio test that pytest runs after these.
    """
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (never a downloaded one)")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright_session: Playwright) -> Iterator[Browser]:
    """Headless Debian Chromium, shared by the session's tests."""
    chromium = playwright_session.chromium.launch(executable_path=str(CHROMIUM), headless=True)
    yield chromium
    chromium.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """``new_page(width=1280, height=720)``: a page in its own context (own cookies)."""
    contexts = []

    def make(width: int = 1280, height: int = 720) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def _wafers_source(harness: Any) -> Path | None:
    folder = harness.wafer_data_dir
    if folder is None:
        return None
    path = Path(folder) / "sample_stratified.npz"
    return path if path.is_file() else None


async def _seed(settings: FabSettings, sample: Path | None) -> None:
    engine = make_async_engine(settings.database_url, settings.db_schema)
    sessions = session_factory(engine)
    classifier = Classifier(settings.model_dir)
    try:
        if sample is not None:
            data = read_npz(sample)
            # Sorted by lot, so wafers of one lot land together and have neighbours to show.
            picked = np.argsort(data.lot, kind="stable")[:WAFERS].tolist()
            await seed.seed_dataset(
                sessions, classifier, settings=settings, dataset=data, indices=picked
            )
        else:
            await seed.seed_synthetic(sessions, classifier, settings=settings, count=WAFERS)
        for name in ENGINEERS:
            await users.add_user(sessions, user=name, role="engineer", password=PASSWORD)
        await users.add_user(sessions, user=ADMIN, role="admin", password=PASSWORD)
    finally:
        await engine.dispose()


@pytest.fixture
def ui_fab(fab_settings: FabSettings, harness: Any) -> Iterator[UiFab]:
    """A fab server (gRPC, HTTP API and UI) on its own schema, seeded, in a thread."""
    settings = fab_settings.model_copy(
        update={
            "review_confidence_threshold": 1.0,
            "ui_session_secret": SecretStr("review-ui-tests-session-secret"),
        }
    )
    sample = _wafers_source(harness)
    # Seeding and the server run on a loop of their own thread: Playwright's sync API keeps
    # an event loop running in the test's thread, where asyncio.run() is refused.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fab-ui", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(_seed(settings, sample), loop).result(START_S)
    server = asyncio.run_coroutine_threadsafe(FabServer(settings).start(), loop).result(START_S)
    try:
        yield UiFab(
            url=f"http://127.0.0.1:{server.http_port}",
            settings=settings,
            real_data=sample is not None,
            pg_url=harness.postgres_url,
        )
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(START_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_S)
        loop.close()


_AXE = Axe()


def assert_accessible(page: Page) -> None:
    """axe-core finds no serious or critical violation on the page."""
    results = _AXE.run(page)
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, "\n".join(bad)


def keys_ready(page: Page) -> None:
    """Wait until the page's key handler is in place (keys pressed earlier would be lost)."""
    expect(page.locator("html[data-keys=ready]")).to_have_count(1)


def sign_in(page: Page, fab: UiFab, user: str, password: str = PASSWORD) -> None:
    """Sign in through the form and wait for the queue."""
    page.goto(f"{fab.url}/ui/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/ui/queue"))


@pytest.fixture
def screenshot(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Page, str], Path]:
    """``screenshot(page, name)``: save a full-page PNG and fail when the page is blank."""
    folder = Path(os.environ.get("TEST_ARTIFACTS_DIR") or tmp_path) / "review_ui"
    folder.mkdir(parents=True, exist_ok=True)

    def take(page: Page, name: str) -> Path:
        path = folder / f"{request.node.name}-{name}.png"
        png = page.screenshot(path=str(path), full_page=True)
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
        _, counts = np.unique(pixels, return_counts=True)
        # A blank page is one colour; a rendered one has text, borders and a map.
        assert counts.max() < 0.97 * pixels.size, f"{path} looks blank"
        assert len(counts) > 8, f"{path} has almost no distinct shades"
        return path

    return take
