"""Child processes of `wafer-platform up`: start in order, health-check, stop in reverse.

Each tier is a command run in its own session (process group), with its output in
``<work-dir>/logs/<tier>.log``; it is up when its health URL answers 200 (or, for a process that
serves nothing, when a given line shows in its log). SIGINT and SIGTERM only set a flag that
every wait polls, so a stop asked for during start-up stops what was started too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import click
import httpx

HEALTH_TIMEOUT_S = 180.0
"""How long a tier may take to answer its health check (MLflow's first start is the slowest)."""
STOP_GRACE_S = 15.0
"""How long a stopped tier may take to exit before it is killed."""
POLL_S = 0.25
TAIL_LINES = 25


class TierFailed(click.ClickException):
    """A tier did not come up (or went down): everything started was stopped (exit status 1)."""


@dataclass
class Tier:
    """One child process of the platform and how to tell that it serves."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    """Added to (and overriding) the launcher's own environment."""
    url: str = "-"
    """Where a person reaches it (shown in the table)."""
    health_url: str | None = None
    """Up when a GET answers 200; None: up when ``ready_text`` shows in its log."""
    ready_text: str | None = None
    stop_signal: signal.Signals = signal.SIGTERM


@dataclass
class Running:
    """A started tier."""

    tier: Tier
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines of the tier's log."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    """Starts tiers in order, checks their health, and stops them all in reverse order.

    ``stop_requested`` is set by SIGINT and SIGTERM (see `signals`): every wait polls it, so a
    Ctrl-C during start-up stops what was started just as one while serving does.
    """

    def __init__(
        self,
        work_dir: Path,
        echo: Callable[[str], None],
        *,
        health_timeout_s: float = HEALTH_TIMEOUT_S,
        grace_s: float = STOP_GRACE_S,
    ) -> None:
        """Tiers run in ``work_dir`` and log to ``work_dir/logs``."""
        self.work_dir = work_dir
        self.log_dir = work_dir / "logs"
        self.echo = echo
        self.health_timeout_s = health_timeout_s
        self.grace_s = grace_s
        self.running: list[Running] = []
        self.stop_requested = threading.Event()
        self._hurry = threading.Event()

    # -- signals -------------------------------------------------------------------------------

    @contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM ask for a clean stop (a second one: kill without the grace)."""

        def handler(signum: int, _: FrameType | None) -> None:
            if self.stop_requested.is_set():
                self._hurry.set()
            self.stop_requested.set()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    # -- starting ------------------------------------------------------------------------------

    def start(self, tiers: Sequence[Tier]) -> None:
        """Start ``tiers`` together, then wait until each is up.

        Raises:
            TierFailed: one exited or did not answer in time (the caller stops the others).
        """
        started = [self._spawn(tier) for tier in tiers]
        for running in started:
            self._wait_up(running)

    def _spawn(self, tier: Tier) -> Running:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{tier.name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **tier.env}
        with log.open("wb") as out:
            process = subprocess.Popen(
                tier.command,
                cwd=self.work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C reaches only us
            )
        running = Running(tier, process, log)
        self.running.append(running)
        return running

    def _wait_up(self, running: Running) -> None:
        tier = running.tier
        deadline = time.monotonic() + self.health_timeout_s
        with httpx.Client(timeout=2.0) as http:
            while not self.stop_requested.is_set():
                code = running.process.poll()
                if code is not None:
                    raise self._failed(running, f"{tier.name} exited with status {code}")
                if self._is_up(running, http):
                    return
                if time.monotonic() > deadline:
                    what = tier.health_url or f"{tier.ready_text!r} in its log"
                    raise self._failed(
                        running,
                        f"{tier.name} did not answer its health check ({what}) "
                        f"within {self.health_timeout_s:.0f} s",
                    )
                self.stop_requested.wait(POLL_S)

    @staticmethod
    def _is_up(running: Running, http: httpx.Client) -> bool:
        tier = running.tier
        if tier.health_url is not None:
            try:
                return http.get(tier.health_url).status_code == 200
            except httpx.HTTPError:
                return False
        if tier.ready_text is not None:
            try:
                return tier.ready_text in running.log.read_text(errors="replace")
            except OSError:
                return False
        return True

    def _failed(self, running: Running, reason: str) -> TierFailed:
        tail = running.tail()
        self.echo(f"\n{reason}; the last lines of {running.log}:")
        self.echo("\n".join(f"  | {line}" for line in tail.splitlines()) or "  (empty)")
        return TierFailed(f"{reason} (log: {running.log})")

    # -- serving -------------------------------------------------------------------------------

    def watch(self) -> None:
        """Return when a stop is asked for.

        Raises:
            TierFailed: a tier exited on its own.
        """
        while not self.stop_requested.wait(0.5):
            for running in self.running:
                code = running.process.poll()
                if code is not None:
                    raise self._failed(running, f"{running.tier.name} exited with status {code}")

    # -- stopping ------------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop every started tier, newest first: its stop signal to its process group, up to
        the grace period to exit, then SIGKILL to the group (what it left behind included)."""
        while self.running:
            running = self.running.pop()
            self._stop(running)

    def _stop(self, running: Running) -> None:
        process, group = running.process, running.process.pid
        if process.poll() is None:
            _signal_group(group, running.tier.stop_signal)
            deadline = time.monotonic() + self.grace_s
            while process.poll() is None and time.monotonic() < deadline:
                if self._hurry.wait(0.1):
                    break
            if process.poll() is None:
                self.echo(f"{running.tier.name} did not stop within {self.grace_s:.0f} s: killed")
        # The group may outlive its leader (a server's workers): nothing of it stays behind.
        _signal_group(group, signal.SIGKILL)
        self.echo(f"stopped {running.tier.name} ({_status(process.wait())})")


def _status(code: int) -> str:
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"ended by {signal.Signals(-code).name}"
    except ValueError:
        return f"ended by signal {-code}"


def _signal_group(group: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):  # the whole group has exited
        os.killpg(group, sig)


def run_tiers(
    supervisor: Supervisor,
    stages: Sequence[Callable[[], Sequence[Tier]]],
    on_up: Callable[[], None],
) -> bool:
    """Start each stage's tiers in turn (a stage is built once the earlier ones are up), call
    ``on_up``, then serve until a stop is asked for; stop every tier in any case.

    Returns:
        True when every tier came up and was then stopped on request; False when the stop came
        during start-up.

    Raises:
        TierFailed: a tier did not come up or exited while serving (the others are stopped).
    """
    try:
        for stage in stages:
            if supervisor.stop_requested.is_set():
                return False
            supervisor.start(stage())
        if supervisor.stop_requested.is_set():
            return False
        on_up()
        supervisor.watch()
        return True
    finally:
        supervisor.stop_all()


def table(running: Sequence[Running], work_dir: Path) -> str:
    """One line per tier: name, where to reach it, its health check, its log and its PID."""
    rows = [("tier", "url", "health", "log", "pid")]
    for r in running:
        health = r.tier.health_url or f"log says {r.tier.ready_text!r}"
        log = str(r.log.relative_to(work_dir)) if r.log.is_relative_to(work_dir) else str(r.log)
        rows.append((r.tier.name, r.tier.url, health, log, str(r.process.pid)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + f"  {row[4]}"
        for row in rows
    )


def check_ports(wanted: dict[str, int], host: str) -> None:
    """Refuse ports (named by their option) beyond 65535, given twice or listened on already.

    Raises:
        click.BadParameter: naming the option.
    """
    seen: dict[int, str] = {}
    for option, port in wanted.items():
        if port > 65535:
            raise click.BadParameter(f"{option}: port {port} is beyond 65535")
        if port in seen:
            raise click.BadParameter(f"{option} and {seen[port]} are both port {port}")
        seen[port] = option
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the servers bind: a port in TIME_WAIT after the last run is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                raise click.BadParameter(f"{option}: port {port} is in use on {host}") from None
