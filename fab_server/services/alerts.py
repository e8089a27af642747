"""Fab alerts: small rules over database aggregates, evaluated periodically, listed, acknowledged.

Thresholds come from ``settings.alerts`` (DESIGN.md §3); windows and minimum evidence are the module
constants below. Subjects: a node id (``latency_p99``, ``review_rate``), a model version
(``reviewed_accuracy``), ``"{model version}/{class name}"`` (``class_f1``), a lot id
(``lot_excursion``), a node id (``result_conflict``: results refused as conflicts). Latency is the
wafer-weighted mean of the p99 of a node's recent metrics windows, so one slow window of a few
wafers pages nobody while a sustained breach shows within minutes. The review rate also comes from
the edge metrics (each window's rate weighted by its wafers): the edge's own count, from a small
table, where counting flagged results would scan millions of rows a day. Accuracy and F1 come from
engineers' verdicts (``labels``).

Lifecycle: at most one unresolved alert per (kind, subject). Re-evaluation refreshes value,
severity and message; an escalation (warning to critical) makes an acknowledged alert active
again. An alert whose condition no longer holds is resolved, except that an unacknowledged lot
excursion stays active after its lot goes quiet (a finished lot is not re-evaluated, and an
excursion must be seen by someone).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import InvalidArgument, NotFound
from fab_server.repository import alerts as repo
from fab_server.repository.alerts import ConfusionCell, LotActivity, NodeWindowStats, ReviewCounts
from fab_server.settings import AlertThresholds, FabSettings
from wafercore.classes import CLASS_NAMES, NUM_CLASSES, DefectClass

logger = logging.getLogger(__name__)

LATENCY_WINDOW = timedelta(minutes=15)
REVIEW_RATE_WINDOW = timedelta(hours=4)
MIN_REVIEW_RATE_WAFERS = 50
ACCURACY_WINDOW = timedelta(hours=24)  # the brief's "daily accuracy"
MIN_REVIEWED_VERDICTS = 20
MIN_CLASS_SUPPORT = 20
LOT_ACTIVE_WINDOW = timedelta(hours=24)
MIN_BASELINE_LOTS = 5
CONFLICT_WINDOW = timedelta(days=7)
# Bounds one evaluation when a replayed backlog makes thousands of lots "recent" at once.
MAX_ACTIVE_LOTS = 5000
MAX_LIST_LIMIT = 1000

_SEVERITY_RANK = {domain.AlertSeverity.WARNING: 0, domain.AlertSeverity.CRITICAL: 1}


class AlertKind(enum.StrEnum):
    """What an alert is about (stored in ``alerts.kind``)."""

    LATENCY_P99 = "latency_p99"
    REVIEW_RATE = "review_rate"
    REVIEWED_ACCURACY = "reviewed_accuracy"
    CLASS_F1 = "class_f1"
    LOT_EXCURSION = "lot_excursion"
    RESULT_CONFLICT = "result_conflict"


@dataclass(frozen=True)
class Finding:
    """A condition that holds now: the alert that should be unresolved for (kind, subject)."""

    kind: AlertKind
    subject: str
    value: float
    threshold: float
    message: str
    severity: domain.AlertSeverity = domain.AlertSeverity.WARNING


@dataclass(frozen=True)
class LotVerdict:
    """The excursion rule applied to one recently active lot (``finding`` None: no excursion)."""

    lot: LotActivity
    finding: Finding | None


@dataclass(frozen=True)
class AlertPlan:
    """What one evaluation changes in the stored alerts."""

    new: list[Finding]
    refresh: list[tuple[domain.Alert, Finding]]
    resolve: list[domain.Alert]


def _span(window: timedelta) -> str:
    minutes = window.total_seconds() / 60
    if minutes < 120:
        return f"{minutes:g} min"
    if minutes <= 48 * 60:
        return f"{minutes / 60:g} h"
    return f"{minutes / 1440:g} days"


def latency_findings(stats: Iterable[NodeWindowStats], t: AlertThresholds) -> list[Finding]:
    """Nodes whose p99 latency over ``LATENCY_WINDOW`` is above the warning/critical threshold."""
    out = []
    for s in stats:
        if s.latency_p99_ms > t.latency_p99_critical_ms:
            severity, limit = domain.AlertSeverity.CRITICAL, t.latency_p99_critical_ms
        elif s.latency_p99_ms > t.latency_p99_warning_ms:
            severity, limit = domain.AlertSeverity.WARNING, t.latency_p99_warning_ms
        else:
            continue
        message = (
            f"p99 latency on {s.node_id} is {s.latency_p99_ms:.1f} ms over the last "
            f"{_span(LATENCY_WINDOW)} ({s.wafers} wafers), above {limit:g} ms"
        )
        out.append(
            Finding(AlertKind.LATENCY_P99, s.node_id, s.latency_p99_ms, limit, message, severity)
        )
    return out


def review_rate_findings(stats: Iterable[NodeWindowStats], t: AlertThresholds) -> list[Finding]:
    """Nodes flagging more than the allowed share of ``MIN_REVIEW_RATE_WAFERS``+ wafers."""
    out = []
    for s in stats:
        if s.wafers < MIN_REVIEW_RATE_WAFERS or s.review_rate <= t.review_rate_warning:
            continue
        message = (
            f"review rate on {s.node_id} is {s.review_rate:.1%} over {s.wafers} wafers in the "
            f"last {_span(REVIEW_RATE_WINDOW)}, above {t.review_rate_warning:.0%}"
        )
        limit = t.review_rate_warning
        out.append(Finding(AlertKind.REVIEW_RATE, s.node_id, s.review_rate, limit, message))
    return out


def accuracy_findings(counts: Iterable[ReviewCounts], t: AlertThresholds) -> list[Finding]:
    """Versions whose confirmed / (confirmed + relabelled) is below the critical threshold.

    Only versions with at least ``MIN_REVIEWED_VERDICTS`` verdicts are judged.
    """
    out = []
    for c in counts:
        verdicts = c.confirmed + c.relabelled
        if verdicts < MIN_REVIEWED_VERDICTS:
            continue
        accuracy = c.confirmed / verdicts
        if accuracy >= t.reviewed_accuracy_critical:
            continue
        message = (
            f"reviewed accuracy of {c.model_version} is {accuracy:.1%} over {verdicts} "
            f"verdicts in the last {_span(ACCURACY_WINDOW)}, below "
            f"{t.reviewed_accuracy_critical:.0%}"
        )
        limit, critical = t.reviewed_accuracy_critical, domain.AlertSeverity.CRITICAL
        kind = AlertKind.REVIEWED_ACCURACY
        out.append(Finding(kind, c.model_version, accuracy, limit, message, critical))
    return out


def class_f1_scores(cells: Iterable[ConfusionCell]) -> dict[tuple[str, int], tuple[float, int]]:
    """(model version, class) -> (F1, support) from confusion counts.

    F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (predicted as the class + truly the class); support
    is the number of reviewed wafers truly of the class. Classes that were neither predicted
    nor true have no F1.
    """
    tp: defaultdict[tuple[str, int], int] = defaultdict(int)
    predicted: defaultdict[tuple[str, int], int] = defaultdict(int)
    true: defaultdict[tuple[str, int], int] = defaultdict(int)
    for c in cells:
        predicted[c.model_version, c.predicted] += c.count
        true[c.model_version, c.true] += c.count
        if c.predicted == c.true:
            tp[c.model_version, c.true] += c.count
    return {
        key: (2 * tp[key] / (predicted[key] + true[key]), true[key])
        for key in predicted.keys() | true.keys()
    }


def class_f1_findings(cells: Iterable[ConfusionCell], t: AlertThresholds) -> list[Finding]:
    """(model version, class) pairs whose F1 is below the threshold.

    Only classes with at least ``MIN_CLASS_SUPPORT`` reviewed wafers truly of the class are
    judged: a few verdicts on a rare class say nothing about it.
    """
    out = []
    window = _span(timedelta(days=t.class_f1_window_days))
    for (version, cls), (f1, support) in sorted(class_f1_scores(cells).items()):
        if support < MIN_CLASS_SUPPORT or f1 >= t.class_f1_warning or not 0 <= cls < NUM_CLASSES:
            continue
        name = CLASS_NAMES[cls]
        message = (
            f"F1 of {name} for {version} is {f1:.2f} over the last {window} "
            f"({support} reviewed {name} wafers), below {t.class_f1_warning:.2f}"
        )
        out.append(
            Finding(AlertKind.CLASS_F1, f"{version}/{name}", f1, t.class_f1_warning, message)
        )
    return out


def conflict_findings(counts: dict[str, int]) -> list[Finding]:
    """A critical alert per node that sent a stored sequence again with other content.

    Either the node lost its outbox and reused sequences, or someone wrote as the node: both
    mean results were refused, and an engineer must look (``result_conflicts``).
    """
    return [
        Finding(
            kind=AlertKind.RESULT_CONFLICT,
            subject=node_id,
            value=float(count),
            threshold=0.0,
            message=f"node {node_id}: {count} result(s) in {_span(CONFLICT_WINDOW)} reused a "
            "stored sequence with other content; they were refused and kept for inspection",
            severity=domain.AlertSeverity.CRITICAL,
        )
        for node_id, count in sorted(counts.items())
    ]


def _failing_share(counts: Sequence[int]) -> float:
    return 1.0 - counts[DefectClass.NONE] / sum(counts)


def lot_excursions(
    lots: Sequence[LotActivity], *, active_since: datetime, t: AlertThresholds
) -> list[LotVerdict]:
    """The excursion rule for every lot last seen after ``active_since``.

    A lot is an excursion when its failing-pattern share (wafers predicted as anything but
    None) exceeds the mean share of the previous ``excursion_baseline_lots`` lots by more than
    ``excursion_margin``, over at least ``excursion_min_wafers`` wafers. Lots with fewer wafers
    (partly tested) do not count towards the baseline, and without ``MIN_BASELINE_LOTS``
    baseline lots (a new fab) nothing is an excursion.

    Args:
        lots: recent lots ascending by ``last_seen``: the active ones and those before them.
        active_since: lots last seen at or before this are baseline only.
        t: thresholds (margin, minimum wafers, baseline length).
    """
    verdicts = []
    for index, lot in enumerate(lots):
        if lot.last_seen <= active_since:
            continue
        previous = lots[max(0, index - t.excursion_baseline_lots) : index]
        shares = [
            _failing_share(p.class_counts)
            for p in previous
            if sum(p.class_counts) >= t.excursion_min_wafers
        ]
        wafers = sum(lot.class_counts)
        if wafers < t.excursion_min_wafers or len(shares) < MIN_BASELINE_LOTS:
            verdicts.append(LotVerdict(lot, None))
            continue
        share = _failing_share(lot.class_counts)
        baseline = sum(shares) / len(shares)
        limit = baseline + t.excursion_margin
        if share <= limit:
            verdicts.append(LotVerdict(lot, None))
            continue
        dominant = max(range(1, NUM_CLASSES), key=lambda c: (lot.class_counts[c], -c))
        message = (
            f"failing-pattern share {share:.0%} over {wafers} wafers exceeds the baseline "
            f"{baseline:.0%} of the previous {len(shares)} lots by more than "
            f"{t.excursion_margin:.0%}; dominant pattern {CLASS_NAMES[dominant]}"
        )
        verdicts.append(
            LotVerdict(lot, Finding(AlertKind.LOT_EXCURSION, lot.lot_id, share, limit, message))
        )
    return verdicts


def plan_alerts(
    unresolved: Sequence[domain.Alert],
    findings: Iterable[Finding],
    *,
    keep: Collection[tuple[str, str]] = (),
) -> AlertPlan:
    """Match what holds now against the stored unresolved alerts.

    Args:
        unresolved: active and acknowledged alerts, oldest first.
        findings: the conditions that hold now.
        keep: (kind, subject) pairs not evaluated this time: left as they are.
    """
    current: dict[tuple[str, str], domain.Alert] = {}
    resolve = []
    for alert in unresolved:
        key = (alert.kind, alert.subject)
        # A duplicate can only predate the evaluation lock; converge on the oldest.
        if key in current:
            resolve.append(alert)
        else:
            current[key] = alert
    new, refresh = [], []
    for finding in findings:
        existing = current.pop((finding.kind.value, finding.subject), None)
        if existing is None:
            new.append(finding)
        else:
            refresh.append((existing, finding))
    resolve.extend(alert for key, alert in current.items() if key not in keep)
    return AlertPlan(new=new, refresh=refresh, resolve=resolve)


def _utc_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    # Naive times are UTC here, as everywhere in the fab server (SQLite returns them naive).
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


async def _apply(session: AsyncSession, plan: AlertPlan, now: datetime) -> None:
    for finding in plan.new:
        alert = await repo.insert_alert(
            session,
            kind=finding.kind.value,
            subject=finding.subject,
            severity=finding.severity,
            message=finding.message,
            value=finding.value,
            threshold=finding.threshold,
            now=now,
        )
        logger.warning("alert %d raised (%s): %s", alert.id, alert.severity, alert.message)
    for alert, finding in plan.refresh:
        escalated = _SEVERITY_RANK[finding.severity] > _SEVERITY_RANK[alert.severity]
        await repo.refresh_alert(
            session,
            alert_id=alert.id,
            severity=finding.severity,
            message=finding.message,
            value=finding.value,
            threshold=finding.threshold,
            # Unconditional on escalation: an acknowledgement may have landed since we read.
            reactivate=escalated,
            now=now,
        )
        if escalated:
            logger.warning(
                "alert %d escalated to %s: %s", alert.id, finding.severity, finding.message
            )
    await repo.resolve_alerts(session, alert_ids=[a.id for a in plan.resolve], now=now)
    for alert in plan.resolve:
        logger.info("alert %d resolved: %s %s", alert.id, alert.kind, alert.subject)


async def evaluate_alerts(
    sessions: async_sessionmaker[AsyncSession],
    *,
    settings: FabSettings,
    now: datetime | None = None,
) -> list[domain.Alert]:
    """Evaluate every rule once: raise, refresh and resolve alerts, flag lot excursions.

    One transaction, serialised across server processes, so the alerts never hold two
    unresolved entries for one (kind, subject).

    Args:
        sessions: the database's session factory.
        settings: thresholds are read from ``settings.alerts``.
        now: the evaluation time (UTC); the current time when None.

    Returns:
        The unresolved (active or acknowledged) alerts after the evaluation, oldest first.
    """
    now = _utc_now(now)
    t = settings.alerts
    active_since = now - LOT_ACTIVE_WINDOW
    async with sessions() as session, session.begin():
        await repo.lock_alert_evaluation(session)
        latency = await repo.node_window_stats(session, since=now - LATENCY_WINDOW, until=now)
        rates = await repo.node_window_stats(session, since=now - REVIEW_RATE_WINDOW, until=now)
        reviews = await repo.review_counts(session, since=now - ACCURACY_WINDOW, until=now)
        cells = await repo.confusion_counts(
            session, since=now - timedelta(days=t.class_f1_window_days), until=now
        )
        lots = await repo.recent_lots(
            session,
            active_since=active_since,
            until=now,
            baseline_lots=t.excursion_baseline_lots,
            max_active=MAX_ACTIVE_LOTS,
        )
        conflicts = await repo.conflict_counts(session, since=now - CONFLICT_WINDOW, until=now)
        verdicts = lot_excursions(lots, active_since=active_since, t=t)
        for verdict in verdicts:
            flag = verdict.finding is not None
            reason = verdict.finding.message if verdict.finding else ""
            if (flag, reason) != (verdict.lot.excursion, verdict.lot.excursion_reason):
                await repo.set_lot_excursion(
                    session, lot_id=verdict.lot.lot_id, excursion=flag, reason=reason
                )
        findings = [
            *latency_findings(latency, t),
            *review_rate_findings(rates, t),
            *accuracy_findings(reviews, t),
            *class_f1_findings(cells, t),
            *(v.finding for v in verdicts if v.finding is not None),
            *conflict_findings(conflicts),
        ]
        unresolved = await repo.unresolved_alerts(session)
        evaluated_lots = {v.lot.lot_id for v in verdicts}
        keep = {
            (a.kind, a.subject)
            for a in unresolved
            if a.kind == AlertKind.LOT_EXCURSION
            and a.state is domain.AlertState.ACTIVE
            and a.subject not in evaluated_lots
        }
        await _apply(session, plan_alerts(unresolved, findings, keep=keep), now)
        return await repo.unresolved_alerts(session)


async def list_alerts(
    sessions: async_sessionmaker[AsyncSession],
    *,
    state: domain.AlertState | None = None,
    limit: int = 100,
) -> list[domain.Alert]:
    """Stored alerts, newest first.

    Args:
        sessions: the database's session factory.
        state: only alerts in this state; every state when None.
        limit: at most this many (1 to 1,000).

    Raises:
        InvalidArgument: ``limit`` is out of range.
    """
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidArgument("limit", f"must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
    async with sessions() as session:
        return await repo.list_alerts(session, state=state, limit=limit)


async def acknowledge_alert(
    sessions: async_sessionmaker[AsyncSession],
    *,
    alert_id: int,
    user: str,
    now: datetime | None = None,
) -> domain.Alert:
    """Record that ``user`` has seen an alert: an active alert becomes acknowledged.

    Idempotent: repeating keeps the first acknowledgement. A resolved alert stays resolved.

    Raises:
        InvalidArgument: ``user`` is empty.
        NotFound: there is no alert with this id.
    """
    if not user.strip():
        raise InvalidArgument("user", "must not be empty")
    async with sessions() as session, session.begin():
        alert = await repo.acknowledge_alert(
            session, alert_id=alert_id, user=user, now=_utc_now(now)
        )
    if alert is None:
        raise NotFound(f"alert {alert_id}")
    return alert


async def run_alert_loop(
    sessions: async_sessionmaker[AsyncSession], settings: FabSettings, stop: asyncio.Event
) -> None:
    """Evaluate the alerts now and every ``settings.alert_interval_seconds`` until ``stop``.

    A failed evaluation (database restarting, a lock timeout) is logged and retried at the next
    tick: the loop runs as long as the server does. Cancellation propagates.
    """
    while not stop.is_set():
        try:
            await evaluate_alerts(sessions, settings=settings)
        except Exception:
            logger.exception(
                "alert evaluation failed; retrying in %g s", settings.alert_interval_seconds
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.alert_interval_seconds)
