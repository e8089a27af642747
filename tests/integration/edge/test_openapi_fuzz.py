"""Schemathesis against a running edge node, from the OpenAPI document the node serves.

Every operation gets its examples, the coverage phase's boundary and invalid cases and a bounded
number of generated ones (about 400 requests in all), derandomized (the same requests on every
run), and every check: no 5xx except the documented 503, and every response is what the
document says (status, content type, headers, body schema).

The run is schemathesis's own CLI (see the ``schemathesis_run`` fixture).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.node import EdgeNode
from edge.settings import EdgeSettings

pytestmark = pytest.mark.integration

CONFIG = """\
color = false
workers = 1
request-timeout = 30

[generation]
max-examples = 50
# Derandomized (Hypothesis's fixed seed per test): every run sends the same requests.
deterministic = true
database = "none"

[checks]
enabled = true

[phases.stateful]
# The node's API has no resources to link one call to another.
enabled = false

[checks.positive_data_acceptance]
# Maps are checked by the service, not the schema (one error naming the first bad die, not one
# per die), so a map the schema allows can still be a 422.
expected-statuses = ["2xx", "422"]
"""


def test_no_request_gets_a_server_error_or_an_undocumented_answer(
    tmp_path: Path, schemathesis_run: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    settings = EdgeSettings(
        node_id="edge-fuzz",
        work_dir=tmp_path / "edge",
        http_port=0,
        outbox_sync="normal",
        warmup_predictions=0,
    )

    async def stop(node: EdgeNode) -> None:
        await node.stop()

    run = schemathesis_run(CONFIG, EdgeNode(settings).start, stop, lambda node: node.http_port)
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
