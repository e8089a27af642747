"""The pipeline's steps after training: evaluate and gate, export, latency, sign, register.

**evaluate** writes the job's model folder from the best checkpoint (`finalize`: the ONNX graph,
halting and temperature tuned on validation lots), evaluates it through the exported runtime on
the held-out data of the config's protocol (official: the ``Test`` lots; random: the test part),
evaluates the current champion on the same wafers, and applies the gate's metric checks.
**export** checks the graph and builds a TensorRT engine where TensorRT imports (else records
why not). **latency** measures batch-1 p99 on the exported runtime and settles the verdict.
**sign** packages and signs the artifact (a rejected model is not signed). **register** adds
the version to the registry as ``candidate``, or records the rejection with the failed checks;
the champion is never touched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.pipeline.context import StepContext, StepFailed, StepOutcome
from cloud.pipeline.gate import GateCheck, Scores, Verdict, latency_check, metric_checks
from cloud.pipeline.train_step import MODEL_DIR, RUN_DIR
from cloud.storage.jobs import REJECTED, SUCCEEDED

if TYPE_CHECKING:
    from cloud.training.config import TrainConfig
    from cloud.training.data import Part

CHAMPION_DIR = "champion"
"""Where evaluate downloads the champion it compares against."""
ARTIFACT_DIR = "artifact"
ENGINE_FILE = "model.engine"
MAX_TAG_CHARS = 4000
"""MLflow keeps tag values up to 5,000 characters; longer ones are cut here."""


def _held_out(ctx: StepContext, config: TrainConfig) -> Part:
    """The held-out wafers of the job's data, as `evaluate_model` picks them."""
    from cloud.training.data import evaluation_part

    data_path = Path(ctx.output("collect")["data_path"])
    return evaluation_part(data_path, config.data.protocol, config.data.val_fraction, config.seed)


def evaluate(ctx: StepContext) -> StepOutcome:
    """Finalize the model, evaluate it and the champion on held-out lots, apply the gate."""
    from cloud.evaluation.evaluate import evaluate_model
    from cloud.training.data import prepare
    from cloud.training.finalize import finalize
    from cloud.training.trainer import BEST

    config = ctx.config()
    data_path = Path(ctx.output("collect")["data_path"])
    model_dir = ctx.job_dir / MODEL_DIR
    data = prepare(config.data, data_path, ctx.settings.cache_dir, config.seed)
    finalize(ctx.job_dir / RUN_DIR / BEST, data.val, model_dir)
    ctx.check()
    ctx.report(0.3)
    report = evaluate_model(
        model_dir,
        data_path,
        config.data.protocol,
        model_dir,
        val_fraction=config.data.val_fraction,
        seed=config.seed,
    )
    candidate = Scores.from_report(report)
    held_out = {"n": report["data"]["n"], "split": report["data"]["split"]}
    ctx.log(
        f"{config.version} on {held_out['n']} held-out wafers ({held_out['split']}): "
        f"macro-F1 {candidate.macro_f1:.4f}, accuracy {candidate.accuracy:.4f}"
    )
    ctx.check()
    ctx.report(0.7)
    champion_version, champion = _champion_scores(ctx, config)
    checks = metric_checks(
        candidate, champion, ctx.settings.gate, champion_version=champion_version
    )
    for check in checks:
        ctx.log(f"gate {check.name}: {'passed' if check.passed else 'FAILED'}: {check.detail}")
    output = {
        "held_out": held_out,
        "candidate": candidate.to_dict(),
        "champion": None
        if champion is None
        else {"version": champion_version, **champion.to_dict()},
        "checks": [c.to_dict() for c in checks],
    }
    return StepOutcome(output=output, verdict=_verdict(output, checks))


def _champion_scores(ctx: StepContext, config: TrainConfig) -> tuple[str | None, Scores | None]:
    """The current champion's version and scores on the job's held-out wafers (None, None
    when there is no champion)."""
    from cloud.evaluation.evaluate import serve_part
    from wafercore.runtime import ModelRuntime

    champion = ctx.registry.by_alias("champion")
    if champion is None:
        ctx.log("no champion registered: the candidate has nothing to beat")
        return None, None
    folder = ctx.job_dir / CHAMPION_DIR
    shutil.rmtree(folder, ignore_errors=True)
    ctx.registry.download_model(champion.version, folder)
    part = _held_out(ctx, config)
    served = serve_part(ModelRuntime.load(folder, threads=2), part)
    scores = Scores.of(part.labels, served.probabilities.argmax(-1))
    ctx.log(
        f"champion {champion.version} on the same wafers: macro-F1 {scores.macro_f1:.4f}, "
        f"accuracy {scores.accuracy:.4f}"
    )
    return champion.version, scores


def _verdict(evaluation: dict[str, Any], checks: list[GateCheck]) -> dict[str, Any]:
    """The job's verdict: the gate's checks with the figures they judged."""
    return {
        **Verdict.of(checks).to_dict(),
        "candidate": evaluation["candidate"],
        "champion": evaluation["champion"],
    }


def _all_checks(ctx: StepContext) -> list[GateCheck]:
    """Every gate check so far: evaluate's, then latency's."""
    checks = [GateCheck.from_dict(c) for c in ctx.output("evaluate")["checks"]]
    if "latency" in ctx.outputs:
        checks.append(GateCheck.from_dict(ctx.output("latency")["check"]))
    return checks


def export(ctx: StepContext) -> StepOutcome:
    """Check the exported ONNX graph; build a TensorRT engine where TensorRT is available."""
    import onnx

    from cloud.export import TensorRTUnavailable, build_tensorrt
    from wafercore.runtime import MODEL_FILE, ModelLoadError, ModelRuntime, file_sha256

    model_dir = ctx.job_dir / MODEL_DIR
    graph_path = model_dir / MODEL_FILE
    try:
        onnx.checker.check_model(onnx.load(str(graph_path)), full_check=True)
        runtime = ModelRuntime.load(model_dir)
    except (onnx.checker.ValidationError, ModelLoadError) as err:
        raise StepFailed(f"the exported model cannot be served: {err}") from None
    try:
        engine = build_tensorrt(graph_path, model_dir / ENGINE_FILE)
        tensorrt = f"built: {engine.name}"
    except TensorRTUnavailable as err:
        tensorrt = f"skipped: {err.reason}"
    except RuntimeError as err:  # the ONNX graph still ships: TensorRT is an optimisation
        tensorrt = f"failed: {err}"
    ctx.log(f"ONNX graph of {runtime.version} checked; TensorRT {tensorrt}")
    return StepOutcome(
        output={
            "version": runtime.version,
            "onnx": {
                "path": str(graph_path),
                "sha256": file_sha256(graph_path),
                "bytes": graph_path.stat().st_size,
            },
            "tensorrt": tensorrt,
        }
    )


def latency(ctx: StepContext) -> StepOutcome:
    """Batch-1 latency of the exported runtime on held-out wafers; settles the verdict."""
    from cloud.evaluation.evaluate import measure_compute

    config = ctx.config()
    compute = measure_compute(ctx.job_dir / MODEL_DIR, _held_out(ctx, config), config.seed)
    check = latency_check(compute["latency_ms"]["p99"], ctx.settings.gate)
    ctx.log(f"gate {check.name}: {'passed' if check.passed else 'FAILED'}: {check.detail}")
    checks = [*_all_checks(ctx), check]
    verdict = Verdict.of(checks)
    ctx.log(verdict.summary(), "info" if verdict.passed else "warning")
    return StepOutcome(
        output={
            "latency_ms": compute["latency_ms"],
            "throughput_per_s": compute["throughput_per_s"],
            "check": check.to_dict(),
        },
        verdict=_verdict(ctx.output("evaluate"), checks),
    )


def sign(ctx: StepContext) -> StepOutcome:
    """Package the model as a signed artifact (not when the gate rejected it)."""
    from cloud.signing import ensure_keypair, package_model

    verdict = Verdict.of(_all_checks(ctx))
    if not verdict.passed:
        return StepOutcome(
            output={"skipped": f"not signed: the gate failed {verdict.failed}"}, skipped=True
        )
    version = ctx.output("collect")["model_version"]
    private_key, key_id = ensure_keypair(ctx.settings)
    artifact = package_model(
        ctx.job_dir / MODEL_DIR,
        ctx.job_dir / ARTIFACT_DIR / f"{version}.tar",
        private_key=private_key,
        key_id=key_id,
    )
    ctx.log(f"signed {artifact.path.name} (sha256 {artifact.sha256[:12]}, key {key_id})")
    return StepOutcome(
        output={
            "artifact": str(artifact.path),
            "signature": str(artifact.signature_path),
            "sha256": artifact.sha256,
            "bytes": artifact.size_bytes,
            "key_id": key_id,
            "golden": artifact.golden,
        }
    )


def register(ctx: StepContext) -> StepOutcome:
    """Register the model as ``candidate``, or record its rejection; the champion stays."""
    job = ctx.job
    verdict = Verdict.of(_all_checks(ctx))
    if not verdict.passed:
        ctx.log(f"rejected: {verdict.summary()}", "warning")
        return StepOutcome(
            output={
                "registered": False,
                "failed_checks": verdict.failed,
                "summary": verdict.summary(),
            },
            job_state=REJECTED,
        )
    signed = ctx.output("sign")
    tags = {
        "job_id": job.id,
        "job_config": job.config_name,
        "job_overrides": json.dumps(job.overrides, sort_keys=True),
        "requested_by": job.requested_by,
        "gate_verdict": "passed",
        "gate_checks": json.dumps([c.to_dict() for c in verdict.checks], sort_keys=True),
    }
    registered = ctx.registry.register(
        ctx.job_dir / MODEL_DIR,
        Path(signed["artifact"]),
        actor=f"pipeline:{job.id}",
        reason=job.reason or f"retraining job {job.id}",
        tags={key: value[:MAX_TAG_CHARS] for key, value in tags.items()},
        alias="candidate",
        key_id=signed["key_id"],
    )
    if registered.tags.get("job_id") != job.id:
        raise StepFailed(
            f"version {registered.version} is already registered (not by this job): "
            "nothing was changed"
        )
    ctx.log(
        f"registered {registered.version} as candidate (MLflow version {registered.mlflow_version})"
    )
    return StepOutcome(
        output={
            "registered": True,
            "version": registered.version,
            "mlflow_version": registered.mlflow_version,
            "aliases": list(registered.aliases),
            "artifact_sha256": registered.artifact_sha256,
        },
        job_state=SUCCEEDED,
    )
