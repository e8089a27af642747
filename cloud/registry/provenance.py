"""What a model folder tells the registry: its version, provenance tags, metrics and files.

A model folder is what training and evaluation write (``model.onnx``, ``model.json``,
``report.json``, ``report.md``, figures, ``MODEL_CARD.md``); the registry stores it as is and
copies the facts worth searching on into tags and metrics.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wafercore.errors import InvalidInput
from wafercore.novelty import NOVELTY_FILE, NOVELTY_MANIFEST_FILE
from wafercore.runtime import MANIFEST_FILE, MODEL_FILE, ModelManifest

REPORT_FILE = "report.json"
"""The evaluation report of a model folder (metrics, confusion matrix, latency)."""
DOCUMENT_FILES = ("report.md", "MODEL_CARD.md")
"""Human-readable files stored with the model when the folder has them."""
FIGURE_SUFFIX = ".png"
"""The report's figures (``report.md`` links them), stored beside it."""

TAG_MODEL_VERSION = "model_version"
"""Tag of every registered version: our version string (``cnn-v2.0.0``)."""
TAG_ARTIFACT_SHA256 = "artifact_sha256"
"""Tag: sha256 of the signed artifact, the digest nodes check."""
TAG_SIGNING_KEY_ID = "signing_key_id"
"""Tag: id of the key that signed the artifact (nodes pin ``<key id>.pub``)."""

SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
"""What a version string may look like here: it goes into MLflow filter strings and paths."""


def check_version(version: str, field: str = "version") -> str:
    """``version`` if it can name a registered version.

    Raises:
        InvalidInput: naming ``field``.
    """
    if not isinstance(version, str) or not SAFE_VERSION.match(version):
        raise InvalidInput(
            field, f"{version!r} is not a model version like 'cnn-v2.0.0' (A-Z, 0-9, '.', '-')"
        )
    return version


def read_manifest(model_dir: Path) -> ModelManifest:
    """The model folder's ``model.json``, validated.

    Raises:
        InvalidInput: ``model_dir`` lacks the graph or the manifest, or the manifest is invalid.
    """
    for name in (MODEL_FILE, MANIFEST_FILE):
        if not (model_dir / name).is_file():
            raise InvalidInput("model_dir", f"{model_dir} has no {name}")
    try:
        manifest = ModelManifest.from_json((model_dir / MANIFEST_FILE).read_text())
    except (ValueError, KeyError, TypeError) as err:
        raise InvalidInput("model_dir", f"{model_dir / MANIFEST_FILE}: {err}") from None
    check_version(manifest.version, "model_dir")
    return manifest


def artifact_version(artifact: Path) -> str:
    """The model version inside a signed artifact (its ``model.json``), without unpacking it.

    Raises:
        InvalidInput: not an artifact tar with a readable ``model.json``.
    """
    try:
        with tarfile.open(artifact, "r:") as archive:
            member = archive.extractfile(MANIFEST_FILE)
            if member is None:
                raise KeyError(MANIFEST_FILE)
            with member:
                return str(json.loads(member.read())["version"])
    except (OSError, KeyError, ValueError, tarfile.TarError) as err:
        raise InvalidInput("artifact", f"{artifact} is not a model artifact: {err}") from None


def provenance_tags(manifest: ModelManifest) -> dict[str, str]:
    """Tags of where a model comes from, from its manifest's ``extra``.

    The data file's sha256 and path, the split protocol, the code version and the training
    config (compact JSON); a key the manifest lacks is left out rather than faked.
    """
    extra: Mapping[str, Any] = manifest.extra or {}
    data: Mapping[str, Any] = extra.get("data") or {}
    tags = {
        "data_sha256": data.get("sha256"),
        "data_path": data.get("path"),
        "data_protocol": data.get("protocol"),
        "code_version": extra.get("code_version"),
    }
    if extra.get("training") is not None:
        tags["config"] = json.dumps(extra["training"], sort_keys=True, separators=(",", ":"))
    return {key: str(value) for key, value in tags.items() if value is not None}


def read_report(model_dir: Path) -> dict[str, Any] | None:
    """The folder's ``report.json``, or None when it has none."""
    path = model_dir / REPORT_FILE
    if not path.is_file():
        return None
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def report_metrics(report: Mapping[str, Any] | None) -> dict[str, float]:
    """The headline metrics of a report: macro_f1, accuracy, ece, p99_ms, gflops_per_wafer."""
    if report is None:
        return {}
    latency = report.get("latency_ms") or {}
    values = {
        "macro_f1": report.get("macro_f1"),
        "accuracy": report.get("accuracy"),
        "ece": report.get("ece"),
        "p99_ms": latency.get("p99") if isinstance(latency, Mapping) else None,
        "gflops_per_wafer": report.get("gflops_per_wafer"),
    }
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def files_to_store(model_dir: Path) -> list[Path]:
    """The files of a model folder the registry keeps: graph, manifest, the novelty model beside
    them (`wafercore.novelty`), reports, figures, card."""
    names = [MODEL_FILE, MANIFEST_FILE, NOVELTY_FILE, NOVELTY_MANIFEST_FILE, REPORT_FILE]
    names += DOCUMENT_FILES
    files = [model_dir / name for name in names if (model_dir / name).is_file()]
    figures = sorted(p for p in model_dir.glob(f"*{FIGURE_SUFFIX}") if p.is_file())
    return files + figures
