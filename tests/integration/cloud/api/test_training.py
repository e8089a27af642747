"""``/training/*`` on the test's PostgreSQL schema and the local Redis: a triggered job is
stored, listed and queued on the pipeline's Celery queue (the worker that runs it is the
pipeline's test); bad input is 422 naming the field; a job nobody runs is cancelled at once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from cloud.pipeline.context import STEPS
from cloud.pipeline.dispatch import step_task_name
from cloud.settings import CloudSettings

pytestmark = pytest.mark.integration

Headers = Callable[..., dict[str, str]]
TRIGGER = {"config_name": "tiny", "overrides": {"optim.epochs": 1}, "reason": "new labels"}


@pytest.fixture
def queue(cloud_settings: CloudSettings) -> Iterator[redis.Redis]:
    """The test's Celery queue on Redis (a list of messages), emptied afterwards."""
    client = redis.Redis.from_url(cloud_settings.broker_url)
    yield client
    client.delete(cloud_settings.task_queue)
    client.close()


def _queued_tasks(queue: redis.Redis, name: str) -> list[tuple[str, str]]:
    """(task name, argsrepr) of each message waiting on queue ``name``."""
    messages = [json.loads(raw) for raw in queue.lrange(name, 0, -1)]
    return [(m["headers"]["task"], m["headers"]["argsrepr"]) for m in messages]


def test_a_triggered_job_is_stored_listed_and_queued_for_a_worker(
    api: httpx.Client, headers: Headers, queue: redis.Redis, cloud_settings: CloudSettings
) -> None:
    engineer = headers("ml-engineer", "eng-ana")
    response = api.post("/training/trigger", headers=engineer, json=TRIGGER)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.json()["state"] == "queued"
    assert response.headers["Location"] == f"/training/jobs/{job_id}"

    assert _queued_tasks(queue, cloud_settings.task_queue) == [
        (step_task_name(STEPS[0]), repr([job_id]))
    ]

    viewer = headers("viewer")
    listed = api.get("/training/jobs", headers=viewer).json()
    assert [(j["id"], j["state"], j["requested_by"]) for j in listed] == [
        (job_id, "queued", "eng-ana")
    ]
    assert listed[0]["overrides"] == {"optim.epochs": 1}
    detail = api.get(f"/training/jobs/{job_id}", headers=viewer).json()
    assert [s["name"] for s in detail["steps"]] == list(STEPS)
    assert {s["state"] for s in detail["steps"]} == {"pending"}
    assert detail["job"]["progress"] == 0 and detail["job"]["verdict"] is None
    assert "triggered by eng-ana" in detail["logs"][0]["message"]
    assert api.get(f"/training/jobs/{job_id}?log_limit=0", headers=viewer).json()["logs"] == []


def test_jobs_are_listed_newest_first_by_state_and_page(
    api: httpx.Client, headers: Headers, queue: redis.Redis
) -> None:
    engineer = headers("ml-engineer")
    ids = [
        api.post("/training/trigger", headers=engineer, json=TRIGGER).json()["job_id"]
        for _ in range(3)
    ]
    cancelled = api.post(f"/training/jobs/{ids[0]}/cancel", headers=engineer)
    assert cancelled.status_code == 200

    def listed(query: str) -> list[str]:
        response = api.get(f"/training/jobs?{query}", headers=engineer)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()]

    assert listed("") == ids[::-1]
    assert listed("state=queued") == [ids[2], ids[1]]
    assert listed("state=cancelled") == [ids[0]]
    assert listed("limit=1&offset=1") == [ids[1]]
    assert listed("state=succeeded") == []


def test_a_job_no_worker_holds_is_cancelled_at_once(
    api: httpx.Client, headers: Headers, queue: redis.Redis
) -> None:
    engineer = headers("ml-engineer", "eng-bo")
    job_id = api.post("/training/trigger", headers=engineer, json=TRIGGER).json()["job_id"]
    response = api.post(f"/training/jobs/{job_id}/cancel", headers=engineer)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    assert response.json()["cancel_requested"] is True
    again = api.post(f"/training/jobs/{job_id}/cancel", headers=engineer)
    assert again.status_code == 200 and again.json()["state"] == "cancelled"
    logs = api.get(f"/training/jobs/{job_id}", headers=engineer).json()["logs"]
    assert any("cancel requested by eng-bo" in line["message"] for line in logs)

    unknown = api.post(f"/training/jobs/{uuid.uuid4()}/cancel", headers=engineer)
    assert unknown.status_code == 404
    assert api.get(f"/training/jobs/{uuid.uuid4()}", headers=engineer).status_code == 404


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"overrides": {}, "reason": "r"}, ["body", "config_name"]),
        ({**TRIGGER, "config_name": "no-such-config"}, ["config_name"]),
        ({**TRIGGER, "config_name": "../etc/passwd"}, ["config_name"]),
        ({**TRIGGER, "overrides": {"optim.epochs": "many"}}, ["overrides.optim.epochs"]),
        ({**TRIGGER, "overrides": {"optim..epochs": 1}}, ["overrides.optim..epochs"]),
        ({**TRIGGER, "reason": " "}, ["reason"]),
        ({**TRIGGER, "reason": ""}, ["body", "reason"]),
        ({**TRIGGER, "requested_by": "someone-else"}, ["body", "requested_by"]),
        ({**TRIGGER, "overrides": [1]}, ["body", "overrides"]),
    ],
)
def test_a_bad_trigger_is_422_naming_the_field_and_queues_nothing(
    api: httpx.Client,
    headers: Headers,
    queue: redis.Redis,
    cloud_settings: CloudSettings,
    body: dict[str, object],
    loc: list[str],
) -> None:
    engineer = headers("ml-engineer")
    response = api.post("/training/trigger", headers=engineer, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    assert api.get("/training/jobs", headers=engineer).json() == []
    assert queue.llen(cloud_settings.task_queue) == 0


@pytest.mark.parametrize(
    ("path", "loc"),
    [
        ("/training/jobs?limit=0", ["query", "limit"]),
        ("/training/jobs?limit=many", ["query", "limit"]),
        ("/training/jobs?offset=-1", ["query", "offset"]),
        ("/training/jobs?state=sleeping", ["query", "state"]),
        ("/training/jobs/not-a-job-id", ["path", "job_id"]),
        (f"/training/jobs/{uuid.uuid4()}?log_limit=-1", ["query", "log_limit"]),
    ],
)
def test_bad_parameters_are_422_naming_them(
    api: httpx.Client, headers: Headers, path: str, loc: list[str]
) -> None:
    response = api.get(path, headers=headers("viewer"))
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def test_a_body_over_the_limit_is_413(api: httpx.Client, headers: Headers) -> None:
    huge = {**TRIGGER, "reason": "x" * 300_000}
    response = api.post("/training/trigger", headers=headers("ml-engineer"), json=huge)
    assert response.status_code == 413
    assert response.json()["detail"][0]["type"] == "content_too_large"
