"""Model versions as the REST API and the CLI see them: list, inspect, move aliases, deploy.

Thin over `cloud.registry.registry.ModelRegistry`: this layer validates what people send
(naming the field at fault) and assembles what they read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloud.registry.registry import ModelRegistry, ModelVersion, check_alias
from cloud.storage.history import DeploymentEvent
from wafercore.errors import InvalidInput
from wafercore.validation import check_id

"""What `request_deploy` needs and this issue does not build."""
MAX_REASON_CHARS = 2000
"""Longest reason accepted for the history (a sentence or a paragraph, not a document)."""


@dataclass(frozen=True)
class ModelDetail:
    """One version with everything a reader wants about it.

    Attributes:
        model: the version, its aliases, tags and metrics.
        report: its ``report.json`` (None when registered without one).
        history: the deployment events about it, oldest first.
    """

    model: ModelVersion
    report: dict[str, Any] | None
    history: list[DeploymentEvent]


def check_reason(reason: str) -> str:
    """``reason`` stripped, if it says something.

    Raises:
        InvalidInput: naming ``reason``.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("reason", "say why (it goes into the deployment history)")
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidInput("reason", f"has {len(reason)} characters; at most {MAX_REASON_CHARS}")
    return reason.strip()


def list_models(registry: ModelRegistry) -> list[ModelVersion]:
    """Every registered version, newest first."""
    return registry.versions()


def get_model(registry: ModelRegistry, version: str) -> ModelDetail:
    """A version with its report and history.

    Raises:
        InvalidInput: ``version`` is not a version string.
        NotFound: no such version.
    """
    model = registry.get(version)
    return ModelDetail(
        model=model, report=registry.report(version), history=registry.history(version)
    )


def set_alias(
    registry: ModelRegistry, version: str, alias: str, *, actor: str, reason: str
) -> ModelVersion:
    """Point ``alias`` at ``version`` (moving ``champion`` moves the old one to ``previous``).

    Raises:
        InvalidInput: an unknown alias, a malformed version or actor, no reason.
        NotFound: no such version.
    """
    check_alias(alias)
    check_id(actor, "actor")
    return registry.set_alias(version, alias, actor=actor, reason=check_reason(reason))
