"""The edge tier's one settings object."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edge.settings import EdgeSettings, parse_address


def test_defaults_run_on_one_machine_without_a_fab() -> None:
    settings = EdgeSettings(_env_file=None)
    assert settings.fab_address is None
    assert settings.outbox_sync == "full"
    assert settings.max_body_bytes == 1_048_576
    assert settings.outbox_path == Path("var/edge/outbox.db")
    assert settings.models_root == Path("var/edge/models")


def test_the_environment_is_read_with_the_edge_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_NODE_ID", "station-07")
    monkeypatch.setenv("EDGE_FAB_ADDRESS", " fab.local:50051 ")
    monkeypatch.setenv("EDGE_OUTBOX_SYNC", "normal")
    monkeypatch.setenv("EDGE_WORK_DIR", "/srv/edge")
    settings = EdgeSettings()
    assert settings.node_id == "station-07"
    assert settings.fab_address == "fab.local:50051"
    assert settings.outbox_sync == "normal"
    assert settings.outbox_path == Path("/srv/edge/outbox.db")
    # Arguments win over the environment (the CLI's flags).
    assert EdgeSettings(node_id="station-08").node_id == "station-08"


def test_an_empty_fab_address_means_no_fab(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_FAB_ADDRESS", "")
    assert EdgeSettings().fab_address is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fab_address", "fab.local"),
        ("fab_address", "fab.local:0"),
        ("fab_address", ":50051"),
        ("fab_address", "fab.local:http"),
        ("node_id", ""),
        ("node_id", "station 7"),
        ("outbox_sync", "off"),
        ("review_threshold", 1.5),
        ("http_port", 70000),
    ],
)
def test_bad_values_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        EdgeSettings(**{field: value})
    assert err.value.errors()[0]["loc"] == (field,)


def test_parse_address_handles_ipv6() -> None:
    assert parse_address("[::1]:50051") == ("::1", 50051)
    assert parse_address("10.0.0.5:443") == ("10.0.0.5", 443)
