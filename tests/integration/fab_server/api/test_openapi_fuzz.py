"""Schemathesis against a running fab server (PostgreSQL), from the OpenAPI document it serves.

Every operation gets its examples, the coverage phase's boundary and invalid cases and a bounded
number of generated ones (a few hundred requests in all), derandomized (the same requests on
every run), with an admin's bearer token (an admin may call every operation), and every check:
no 5xx except the documented 503, and every response is what the document says (status,
content type, headers, body schema).

The run is schemathesis's own CLI (see the ``schemathesis_run`` fixture).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from fab_server.app import FabServer
from fab_server.settings import ApiToken, FabSettings

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "fuzzing-admin-token-000000001"
CONFIG = f"""\
color = false
workers = 1
request-timeout = 30
headers = {{ Authorization = "Bearer {ADMIN_TOKEN}" }}

[generation]
max-examples = 25
# Derandomized (Hypothesis's fixed seed per test): every run sends the same requests.
deterministic = true
database = "none"

[checks]
enabled = true

[phases.stateful]
# Off: links between operations are not described, and the queue's items are made by ingest.
enabled = false

[checks.positive_data_acceptance]
# Requests the schema allows that the API may still refuse, each on purpose: an id with control
# characters, a comment or label that does not fit the outcome (rules across fields), a
# sequence past 2**63-1 that JSON Schema's float maximum lets through (422); an item, alert or
# lot that does not exist (404); an item in another state (409).
expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
"""


def test_no_request_gets_a_server_error_or_an_undocumented_answer(
    fab_settings: FabSettings, schemathesis_run: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    settings = fab_settings.model_copy(
        update={"api_tokens": [ApiToken(token=ADMIN_TOKEN, user="fuzz-admin", role="admin")]}
    )

    async def stop(server: FabServer) -> None:
        await server.stop()

    run = schemathesis_run(CONFIG, FabServer(settings).start, stop, lambda s: s.http_port)
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
