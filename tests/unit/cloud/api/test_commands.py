"""What ``wafer-cloud train --remote`` sends: the config's name and the ``--set`` overrides."""

from __future__ import annotations

import click
import pytest

from cloud.api.commands import config_name, parse_overrides


@pytest.mark.parametrize(
    ("given", "name"),
    [("tiny", "tiny"), ("configs/tiny.yaml", "tiny"), ("cnn64.yml", "cnn64"), ("a/b", "b")],
)
def test_a_config_path_stands_for_its_name(given: str, name: str) -> None:
    assert config_name(given) == name


def test_overrides_are_dotted_keys_with_yaml_values() -> None:
    parsed = parse_overrides(
        ("optim.epochs=2", "optim.lr=3e-4", "data.path=sample.npz", "cnn.channels=[4, 8]", "x=")
    )
    assert parsed == {
        "optim.epochs": 2,
        "optim.lr": 3e-4,
        "data.path": "sample.npz",
        "cnn.channels": [4, 8],
        "x": None,
    }
    # A value YAML cannot read is sent as the text it is.
    assert parse_overrides(("note=a: b: c",)) == {"note": "a: b: c"}


@pytest.mark.parametrize("pair", ["epochs", "=3", " =3"])
def test_a_pair_without_a_key_is_refused(pair: str) -> None:
    with pytest.raises(click.BadParameter, match="key=value"):
        parse_overrides((pair,))
