"""What a pipeline step gets to work with, and how it ends.

A step is a function ``(StepContext) -> StepOutcome``. It finds the outputs of the steps before
it in the context, writes its files under the job's folder (``settings.jobs_dir / <job id>``,
replacing them when it runs again), logs to the job, reports its progress, and calls
`StepContext.check` wherever stopping is safe. It ends by returning its outcome, or by raising
`StepFailed` (the job fails with that reason), `JobCancelled` or `LeaseLost`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.settings import CloudSettings
from cloud.storage import jobs
from cloud.storage.db import Database
from cloud.storage.tables import utcnow

if TYPE_CHECKING:
    from cloud.pipeline.lease import Heartbeat
    from cloud.registry.registry import ModelRegistry
    from cloud.training.config import TrainConfig

STEPS = ("collect", "validate", "train", "evaluate", "export", "latency", "sign", "register")
"""The steps of every job, in order; each is its own Celery task."""
STEP_SHARE = {
    "collect": 0.05,
    "validate": 0.02,
    "train": 0.60,
    "evaluate": 0.15,
    "export": 0.04,
    "latency": 0.05,
    "sign": 0.04,
    "register": 0.05,
}
"""Share of a job's progress each step stands for (training dominates)."""


def progress_at(step: str, fraction: float) -> float:
    """The job's progress when ``step`` is ``fraction`` (0 to 1) done."""
    before = sum(STEP_SHARE[s] for s in STEPS[: STEPS.index(step)])
    return round(min(1.0, before + STEP_SHARE[step] * min(max(fraction, 0.0), 1.0)), 4)


def next_step(step: str) -> str | None:
    """The step after ``step``, None after the last."""
    index = STEPS.index(step)
    return STEPS[index + 1] if index + 1 < len(STEPS) else None


class StepFailed(Exception):  # noqa: N818 - reads as what happened to the step
    """The step cannot succeed (bad data, a failed check): the job fails with ``reason``."""

    def __init__(self, reason: str, output: Mapping[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.output = dict(output) if output is not None else None


class JobCancelled(Exception):  # noqa: N818
    """The job was asked to cancel; the step stopped at a safe point."""


class LeaseLost(Exception):  # noqa: N818
    """Another worker took this step over (this one was taken for lost): stop, write nothing."""


@dataclass(frozen=True)
class StepOutcome:
    """How a step ended.

    Attributes:
        output: what it produced (JSON), kept as the step's output.
        skipped: it had nothing to do (for example no signing for a rejected model).
        job_state: the job's final state, set by the last step.
        verdict: the gate's verdict, when this step settled it.
    """

    output: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    job_state: str | None = None
    verdict: dict[str, Any] | None = None


class StepContext:
    """One attempt of one step of one job, under one worker's lease."""

    def __init__(
        self,
        *,
        settings: CloudSettings,
        db: Database,
        job: jobs.Job,
        step: str,
        attempt: int,
        worker: str,
        outputs: Mapping[str, dict[str, Any]],
        heartbeat: Heartbeat | None = None,
    ) -> None:
        """The context of ``step`` of ``job``; ``outputs`` are the finished steps' outputs."""
        self.settings = settings
        self.db = db
        self.job = job
        self.step = step
        self.attempt = attempt
        self.worker = worker
        self.outputs = dict(outputs)
        self._heartbeat = heartbeat

    @property
    def job_dir(self) -> Path:
        """The job's working folder (created)."""
        path = self.settings.jobs_dir / self.job.id
        path.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def registry(self) -> ModelRegistry:
        """The model registry (MLflow), opened on first use."""
        from cloud.registry.registry import ModelRegistry

        return ModelRegistry(self.settings, self.db)

    def output(self, step: str) -> dict[str, Any]:
        """The output of an earlier, finished step.

        Raises:
            StepFailed: that step has not finished (the job's steps ran out of order).
        """
        if step not in self.outputs:
            raise StepFailed(f"step {self.step} needs the output of {step}, which has none")
        return self.outputs[step]

    def config(self) -> TrainConfig:
        """The job's training config, as the collect step fixed it (version and data path)."""
        from cloud.training.config import TrainConfig

        return TrainConfig.model_validate(self.output("collect")["config"])

    def log(self, message: str, level: str = "info") -> None:
        """Append a line to the job's log, under this step."""
        with self.db.session() as session:
            jobs.add_log(
                session,
                job_id=self.job.id,
                step=self.step,
                level=level,
                message=message,
                now=utcnow(),
            )

    def check(self) -> None:
        """Stop here if the job was asked to cancel or the lease was lost.

        Raises:
            LeaseLost: another worker took this step over.
            JobCancelled: the job was asked to cancel.
        """
        if self._heartbeat is None:
            return
        if self._heartbeat.lost.is_set():
            raise LeaseLost(f"job {self.job.id}: step {self.step} was taken over")
        if self._heartbeat.cancelled.is_set():
            raise JobCancelled(f"job {self.job.id} was asked to cancel")

    def report(self, fraction: float, **where: Any) -> None:
        """This step is ``fraction`` (0 to 1) done; written to the job with the heartbeat, and
        ``where`` (``epochs_done=3, epochs=6``) as the step's output while it runs."""
        if self._heartbeat is not None:
            self._heartbeat.set_progress(
                progress_at(self.step, fraction), {"fraction": round(fraction, 4), **where}
            )
