"""Schemathesis against a running cloud API (PostgreSQL, the session's `mlflow server`, Redis),
from the OpenAPI document it serves.

Every operation gets its examples, the coverage phase's boundary and invalid cases and a bounded
number of generated ones, derandomized (the same requests on every run), with an admin's bearer
token (an admin may call every operation), and every check: no 5xx, and every response is what
the document says (status, content type, headers, body schema).
A shipped model is registered, so the model routes answer with data, not only 404s.

The run is schemathesis's own CLI (see the ``schemathesis_run`` fixture).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
import redis

from cloud.api.server import ApiServer
from cloud.registry.importer import import_model_folder
from cloud.registry.registry import ModelRegistry
from cloud.services.tokens import add_token
from cloud.settings import CloudSettings
from cloud.storage.db import Database
from wafercore.shipped import shipped_model_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = """\
color = false
workers = 1
request-timeout = 60
headers = {{ Authorization = "Bearer {token}" }}

[generation]
max-examples = 25
# Derandomized (Hypothesis's fixed seed per test): every run sends the same requests.
deterministic = true
database = "none"

[checks]
enabled = true

[phases.stateful]
# Off: links between operations are not described.
enabled = false

[checks.positive_data_acceptance]
# Requests the schema allows that the API may still refuse, each on purpose: a config that
# does not exist, an override the config refuses, a blank reason (422); a job or model version
# that does not exist (404); cancelling a finished job or stopping a finished rollout, or
# deploying to a fab that has a rollout under way (409).
expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
"""


def test_no_request_gets_a_server_error_or_an_undocumented_answer(
    cloud_settings: CloudSettings,
    schemathesis_run: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    db = Database(cloud_settings.db_url, cloud_settings.db_schema)
    try:
        token = add_token(db, user="fuzz-admin", role="admin")
        import_model_folder(
            ModelRegistry(cloud_settings, db),
            cloud_settings,
            shipped_model_dir("cnn-v1.0.0"),
            actor="cli:fuzz",
            reason="something to read",
            alias="champion",  # the drift report's reference
        )
    finally:
        db.dispose()

    async def start() -> ApiServer:
        return await ApiServer(cloud_settings).start()

    async def stop(server: ApiServer) -> None:
        await server.stop()

    try:
        run = schemathesis_run(CONFIG.format(token=token), start, stop, lambda s: s.port)
    finally:
        # The jobs it triggered wait on the test's own queue: nobody will run them.
        with redis.Redis.from_url(cloud_settings.broker_url) as broker:
            broker.delete(cloud_settings.task_queue)
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
