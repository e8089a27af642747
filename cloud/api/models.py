"""``/models/*``: registered model versions, their signed artifacts, aliases and deployments.

Reading needs any token (viewer). Moving ``candidate`` needs ml-engineer; moving ``champion``
or ``previous`` (what the fleet serves, and its rollback) and deploying need admin. The actor
recorded in the deployment history is the token's holder, never a field of the body.

Artifacts: ``GET /models/{version}/artifact`` streams the signed artifact with its SHA-256 in
``X-Artifact-SHA256`` (and as the ETag), the signing key's id in ``X-Signature-Key-Id``;
``GET /models/{version}/artifact.sig`` is its detached Ed25519 signature (64 raw bytes), which
a node checks with `wafercore.signature.verify_artifact` against its pinned ``<key_id>.pub``.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the route signatures,
# which name the role dependencies defined inside the router factory.
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response, status
from fastapi.responses import FileResponse

from cloud.api.auth import Principal, TokenAuth
from cloud.api.resources import Resources
from cloud.api.schemas import (
    AliasRequest,
    DeployRequest,
    ModelDetailOut,
    ModelVersionOut,
    RolloutOut,
)
from cloud.registry.artifacts import ArtifactCache, LocalArtifact
from cloud.registry.provenance import SAFE_VERSION
from cloud.services import models, rollouts
from cloud.services.tokens import role_at_least
from wafercore.web import error_responses

SHA256_HEADER = "X-Artifact-SHA256"
KEY_ID_HEADER = "X-Signature-Key-Id"
ALIAS_ROLES = {"candidate": "ml-engineer", "champion": "admin", "previous": "admin"}
_BODY = (408, 413)
_ITEM = (404,)

Version = Annotated[
    str, Path(pattern=SAFE_VERSION.pattern, description="A model version, e.g. cnn-v2.0.0.")
]

_ARTIFACT_HEADERS = {
    SHA256_HEADER: {"description": "Hex SHA-256 of the body.", "schema": {"type": "string"}},
    KEY_ID_HEADER: {"description": "Id of the signing key.", "schema": {"type": "string"}},
    "ETag": {"description": "The quoted SHA-256.", "schema": {"type": "string"}},
}
_BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}


def models_router(resources: Resources, auth: TokenAuth) -> APIRouter:
    """The model routes, on the resources of the running app."""
    router = APIRouter(
        prefix="/models", tags=["models"], responses=error_responses((401, 403, 422, 503))
    )
    Viewer = Annotated[Principal, Depends(auth.require("viewer"))]  # noqa: N806
    # A fab server downloads the artifacts its deployment plan names.
    Reader = Annotated[Principal, Depends(auth.require("viewer", also=("fab",)))]  # noqa: N806
    Engineer = Annotated[Principal, Depends(auth.require("ml-engineer"))]  # noqa: N806
    Admin = Annotated[Principal, Depends(auth.require("admin"))]  # noqa: N806
    cache = ArtifactCache(resources.settings.artifact_cache_dir)

    @router.get("", response_model=list[ModelVersionOut])
    def list_models(_: Viewer) -> list[ModelVersionOut]:
        """Every registered version, newest first."""
        found = models.list_models(resources.model_registry())
        return [ModelVersionOut.model_validate(version) for version in found]

    @router.post(
        "/deploy",
        status_code=status.HTTP_201_CREATED,
        response_model=RolloutOut,
        responses=error_responses((*_ITEM, *_BODY, 409)),
    )
    def deploy(caller: Admin, body: DeployRequest, response: Response) -> RolloutOut:
        """Start a canary rollout of a version in a fab; follow it at ``/rollouts/{id}``.

        ``nodes`` name the canary arm; empty, the API picks ``canary_nodes`` (2) of the nodes
        the fab has reported. The others keep the baseline (the control arm). 409 when the fab
        already has a rollout under way or already runs the version.
        """
        rollout = rollouts.start(
            resources.database(),
            resources.model_registry(),
            resources.settings.rollouts,
            fab_id=body.fab_id,
            version=body.version,
            nodes=list(body.nodes),
            actor=caller.user,
            reason=body.reason,
            now=datetime.now(UTC),
        )
        response.headers["Location"] = f"/rollouts/{rollout.id}"
        return RolloutOut.model_validate(rollout)

    @router.get("/{version}", response_model=ModelDetailOut, responses=error_responses(_ITEM))
    def get_model(_: Viewer, version: Version) -> ModelDetailOut:
        """A version: its metadata, evaluation report, aliases and deployment history."""
        detail = models.get_model(resources.model_registry(), version)
        return ModelDetailOut.model_validate(detail, from_attributes=True)

    @router.post(
        "/{version}/aliases",
        response_model=ModelVersionOut,
        responses=error_responses((*_ITEM, *_BODY)),
    )
    def set_alias(caller: Engineer, version: Version, body: AliasRequest) -> ModelVersionOut:
        """Point an alias at this version; moving ``champion`` moves the old one to ``previous``.

        ``candidate`` needs ml-engineer, ``champion`` and ``previous`` admin.
        """
        needed = ALIAS_ROLES[body.alias]
        if not role_at_least(caller.role, needed):  # type: ignore[arg-type]
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"moving {body.alias} needs the {needed} role"
            )
        moved = models.set_alias(
            resources.model_registry(), version, body.alias, actor=caller.user, reason=body.reason
        )
        return ModelVersionOut.model_validate(moved)

    @router.get(
        "/{version}/artifact",
        response_class=FileResponse,
        responses={
            200: {
                "description": "The signed artifact (tar).",
                "headers": _ARTIFACT_HEADERS,
                "content": {"application/octet-stream": _BINARY},
            },
            304: {"description": "Unchanged: If-None-Match named its ETag."},
            **error_responses(_ITEM),
        },
    )
    def artifact(_: Reader, version: Version, request: Request) -> Response:
        """The signed artifact, streamed, with its SHA-256 and signing key id in headers."""
        local = cache.fetch(resources.model_registry(), version)
        etag = f'"{local.model.artifact_sha256}"'
        if etag in _etags(request.headers.get("if-none-match")):
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
        return FileResponse(
            local.path,
            media_type="application/octet-stream",
            filename=local.path.name,
            headers=_artifact_headers(local, resources.settings.signing_key_id),
        )

    @router.get(
        "/{version}/artifact.sig",
        response_class=Response,
        responses={
            200: {
                "description": "The detached Ed25519 signature of the artifact's SHA-256.",
                "headers": {k: v for k, v in _ARTIFACT_HEADERS.items() if k != "ETag"},
                "content": {"application/octet-stream": _BINARY},
            },
            **error_responses(_ITEM),
        },
    )
    def artifact_signature(_: Reader, version: Version) -> Response:
        """The artifact's detached signature (64 raw bytes)."""
        local = cache.fetch(resources.model_registry(), version)
        headers = _artifact_headers(local, resources.settings.signing_key_id)
        del headers["ETag"]
        return Response(
            local.signature_path.read_bytes(),
            media_type="application/octet-stream",
            headers=headers,
        )

    return router


def _artifact_headers(local: LocalArtifact, default_key_id: str) -> dict[str, str]:
    return {
        SHA256_HEADER: local.model.artifact_sha256,
        # Versions registered without the tag were signed with the configured key.
        KEY_ID_HEADER: local.model.signing_key_id or default_key_id,
        "ETag": f'"{local.model.artifact_sha256}"',
    }


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}
