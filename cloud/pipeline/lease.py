"""The heartbeat of a running step: it renews the worker's lease on the job in the background.

A step can spend minutes in one call (an epoch, an evaluation) without a chance to write, so a
thread renews the lease every ``settings.heartbeat_s`` and reads back whether the job was asked
to cancel. Killing the worker (even with SIGKILL) kills the thread too: the lease then ages
past ``settings.stale_after_s`` and `cloud.pipeline.runner.recover_stalled` gives the step to
another worker. The step itself only reads the two flags this thread sets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from cloud.storage import job_leases
from cloud.storage.db import Database
from cloud.storage.tables import utcnow

log = logging.getLogger(__name__)


class Heartbeat:
    """Renews ``worker``'s lease on a job while the ``with`` block runs.

    Attributes:
        cancelled: set when the job was asked to cancel.
        lost: set when the lease went to another worker (this one was taken for lost).
    """

    def __init__(
        self, db: Database, job_id: str, step: str, worker: str, interval_s: float
    ) -> None:
        """Prepare (not start) the heartbeat of ``worker`` running ``step`` of ``job_id``."""
        self._db = db
        self._job_id = job_id
        self._step = step
        self._worker = worker
        self._interval = interval_s
        self._stop = threading.Event()
        self._progress: float | None = None
        self._step_progress: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def set_progress(self, progress: float, step_progress: Mapping[str, Any] | None = None) -> None:
        """The job's progress (0 to 1) and, optionally, where the step stands (shown as its
        output while it runs); written with the next heartbeat."""
        with self._lock:
            self._progress = progress
            if step_progress is not None:
                self._step_progress = dict(step_progress)

    def beat(self) -> None:
        """Renew the lease now and read back the job's cancellation."""
        with self._lock:
            progress, self._progress = self._progress, None
            step_progress, self._step_progress = self._step_progress, None
        try:
            with self._db.session() as session:
                state = job_leases.heartbeat(
                    session,
                    job_id=self._job_id,
                    worker=self._worker,
                    now=utcnow(),
                    progress=progress,
                    step=self._step,
                    step_progress=step_progress,
                )
        except SQLAlchemyError as err:
            # A database hiccup is not a lost lease: the next beat tries again.
            log.warning("heartbeat of job %s failed: %s", self._job_id, err)
            return
        if state is None:
            self.lost.set()
        elif state:
            self.cancelled.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.beat()
            if self.lost.is_set():
                return
