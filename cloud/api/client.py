"""A small client of the cloud API, for ``wafer-cloud train --remote``: trigger, then follow."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

TRIGGER_TIMEOUT_S = 900.0
"""A trigger is quick, unless the server runs Celery eagerly (the demo): then it returns
once the whole job has run."""
TERMINAL_STATES = frozenset({"succeeded", "rejected", "failed", "cancelled"})
"""A job in one of these states changes no more."""


class ApiError(RuntimeError):
    """The API refused a request (or did not answer): the status and what it said."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message if status is None else f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class CloudApiClient:
    """Calls the cloud API at ``base_url`` with a bearer token."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 30.0) -> None:
        """A client; close it (or use it as a context manager)."""
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )

    def __enter__(self) -> CloudApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def trigger(self, *, config_name: str, overrides: dict[str, Any], reason: str) -> str:
        """Queue a retraining job; its id.

        Raises:
            ApiError: the API refused it (422 names the field) or did not answer.
        """
        body = {"config_name": config_name, "overrides": overrides, "reason": reason}
        answer = self._call("POST", "/training/trigger", json=body, timeout=TRIGGER_TIMEOUT_S)
        return str(answer["job_id"])

    def job(self, job_id: str, *, log_limit: int = 20) -> dict[str, Any]:
        """A job's detail: ``{"job": ..., "steps": [...], "logs": [...]}``.

        Raises:
            ApiError: the API refused it or did not answer.
        """
        answer = self._call("GET", f"/training/jobs/{job_id}", params={"log_limit": log_limit})
        assert isinstance(answer, dict)
        return answer

    def deploy(self, *, fab_id: str, version: str, nodes: list[str], reason: str) -> Any:
        """Start a canary rollout; the rollout as the API returns it."""
        body = {"fab_id": fab_id, "version": version, "nodes": nodes, "reason": reason}
        return self._call("POST", "/models/deploy", json=body)

    def rollouts(self, *, fab_id: str | None = None, active: bool = False) -> Any:
        """Rollouts, newest first."""
        params: dict[str, Any] = {"active": active} | ({"fab_id": fab_id} if fab_id else {})
        return self._call("GET", "/rollouts", params=params)

    def rollout(self, rollout_id: str) -> Any:
        """One rollout with its latest decision."""
        return self._call("GET", f"/rollouts/{rollout_id}")

    def stop_rollout(self, rollout_id: str, *, reason: str) -> Any:
        """Emergency stop of a rollout."""
        return self._call("POST", f"/rollouts/{rollout_id}/stop", json={"reason": reason})

    def drift(self, *, compute: bool = False) -> Any:
        """The newest drift report, or (``compute``) one computed now."""
        if compute:
            return self._call("POST", "/analytics/drift/compute")
        return self._call("GET", "/analytics/drift")

    def drift_png(self) -> bytes:
        """The drift plot (PNG bytes)."""
        return self._request("GET", "/analytics/drift.png").content

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(
                None, f"cannot reach the cloud API at {self._http.base_url}: {exc}"
            ) from exc
        if response.is_success:
            return response
        raise ApiError(response.status_code, _problem(response))


def _problem(response: httpx.Response) -> str:
    """The error body's problems as one line (``loc: msg; ...``), or its text."""
    try:
        detail = response.json()["detail"]
        return "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            if item.get("loc")
            else str(item["msg"])
            for item in detail
        )
    except (ValueError, KeyError, TypeError):
        return response.text[:500] or response.reason_phrase
