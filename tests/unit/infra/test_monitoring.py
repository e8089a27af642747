"""Prometheus and Grafana: every series a rule or a dashboard queries is one the code exports.

The exported names come from the real registries: an `EdgeMetrics` (with the uplink's, the
metrics pusher's and the OTA agent's series on it, as on a running node) and the default
registry once the fab's modules that define series are imported. A dashboard that queries a
series nobody exports fails here, not silently on a blank panel.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

from edge.metrics import EdgeMetrics
from edge.metrics_push import push_series
from edge.ota import rejected_counter
from edge.uplink import uplink_metrics

FAB_METRIC_MODULES = (
    "fab_server.api.health",
    "fab_server.services.ingest",
    "fab_server.rpc.servicer",
    "fab_server.sync.deployments",
)
"""The fab's modules that define Prometheus series (grep Counter(, Gauge(, Histogram()."""
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"}
"""Series Prometheus makes itself."""
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}

# PromQL words that are not series: operators, modifiers, aggregation clauses.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "atop", "inf", "nan",
}  # fmt: skip
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """Every series name ``registry`` exposes, with the suffixes of each family's type."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in _SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def series_in(expr: str) -> set[str]:
    """The series names a PromQL expression reads.

    Strips strings, label matchers, ranges, grouping clauses, Grafana variables, durations and
    numbers; what is left and is not a function call or a keyword is a series name.
    """
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?(ms|s|m|h|d|w|y)?\b", " ", text)
    names = set()
    for match in _IDENT.finditer(text):
        word = match.group()
        following = text[match.end() :].lstrip()[:1]
        if following == "(" or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def balanced(expr: str) -> bool:
    """Brackets of every kind close in order (outside strings)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in text:
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


@pytest.fixture(scope="module")
def exported() -> set[str]:
    edge = EdgeMetrics(model_version=lambda: "test", outbox_depth=lambda: 0)
    uplink_metrics(edge.registry)
    push_series(edge.registry)
    rejected_counter(edge.registry)
    for module in FAB_METRIC_MODULES:
        importlib.import_module(module)
    return exposed_names(edge.registry) | exposed_names(REGISTRY) | PROMETHEUS_OWN


def _dashboard_exprs(node: Any, where: str) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every target and query variable of a dashboard."""
    if isinstance(node, dict):
        for key, value in node.items():
            query = isinstance(value, str) and (
                key == "expr" or (key == "definition" and "(" in value)
            )
            if query:
                yield where, value
            else:
                yield from _dashboard_exprs(value, f"{where}/{node.get('title', key)}")
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_exprs(item, where)


def _variable_query(expr: str) -> str:
    """``label_values(metric, label)`` is Grafana's, not PromQL: keep the metric."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", expr)
    return match.group(1) if match else expr


def _all_exprs(infra: SimpleNamespace) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in sorted((infra.root / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        found += [(w, _variable_query(e)) for w, e in _dashboard_exprs(dashboard, path.name)]
    rules = yaml.safe_load((infra.root / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found.append((f"alerts.yml/{rule['alert']}", rule["expr"]))
    return found


def test_every_queried_series_is_exported(infra: SimpleNamespace, exported: set[str]) -> None:
    exprs = _all_exprs(infra)
    assert len(exprs) > 30
    missing = sorted(
        f"{where}: {name}" for where, expr in exprs for name in series_in(expr) - exported
    )
    assert missing == []


def test_expressions_are_well_formed(infra: SimpleNamespace) -> None:
    for where, expr in _all_exprs(infra):
        assert balanced(expr), f"{where}: unbalanced brackets in {expr}"
        assert series_in(expr), f"{where}: reads no series: {expr}"


def test_the_check_catches_a_missing_series(exported: set[str]) -> None:
    expr = (
        'histogram_quantile(0.99, sum by (node, le) (rate(edge_latency_ms_bucket{node=~"$n"}'
        "[$__rate_interval]))) > 0.045 and edge_outbox_depth offset 1d"
    )
    assert series_in(expr) == {"edge_latency_ms_bucket", "edge_outbox_depth"}
    assert series_in(expr) - exported == {"edge_latency_ms_bucket"}
    # A counter is exposed with _total only; its bare name is no series.
    assert "edge_wafers_classified_total" in exported
    assert "edge_wafers_classified" not in exported
    assert "edge_inference_latency_seconds_bucket" in exported
    assert "fab_review_queue_depth" in exported and "fab_results_ingested_total" in exported


def test_dashboards_show_what_the_brief_asks(infra: SimpleNamespace) -> None:
    edge = (infra.root / "grafana" / "dashboards" / "edge-fleet.json").read_text()
    for needle in (
        "histogram_quantile(0.5,",
        "histogram_quantile(0.9,",
        "histogram_quantile(0.99,",
        "edge_recursion_steps_sum",
        "edge_confidence_bucket",
        "edge_wafers_flagged_total",
        "edge_outbox_depth",
    ):
        assert needle in edge, needle
    fab = (infra.root / "grafana" / "dashboards" / "fab.json").read_text()
    for needle in ("fab_results_ingested_total", "fab_review_queue_depth", "ALERTS"):
        assert needle in fab, needle


def test_alert_thresholds_are_the_briefs(infra: SimpleNamespace) -> None:
    from fab_server.settings import AlertThresholds

    rules = yaml.safe_load((infra.root / "prometheus" / "alerts.yml").read_text())
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    defaults = AlertThresholds()
    warning, critical = by_name["EdgeLatencyP99Warning"], by_name["EdgeLatencyP99Critical"]
    assert warning["labels"]["severity"] == "warning"
    assert critical["labels"]["severity"] == "critical"
    assert float(warning["expr"].split(">")[-1]) * 1000 == defaults.latency_p99_warning_ms
    assert float(critical["expr"].split(">")[-1]) * 1000 == defaults.latency_p99_critical_ms
    review = by_name["EdgeReviewRateHigh"]["expr"]
    assert f"> {defaults.review_rate_warning}" in review


def test_prometheus_scrapes_every_metrics_endpoint(infra: SimpleNamespace) -> None:
    config = yaml.safe_load((infra.root / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {"edge-1:8000", "edge-2:8000", "fab:8080"}
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
