from pathlib import Path

import pytest

from cloud.training.config import load_config

CONFIGS = Path(__file__).parents[4] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    config = load_config(path)
    assert config.version.startswith(config.kind)


def test_trm_cpu_config_builds_a_model_within_budget() -> None:
    from cloud.models.trm import TinyRecursiveModel, count_parameters, flops_per_step

    config = load_config(CONFIGS / "trm_cpu.yaml")
    arch = config.trm.build()
    assert count_parameters(TinyRecursiveModel(arch)) <= 2_000_000
    assert flops_per_step(arch) <= 0.3e9


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: trm\nversion: trm-v1\n", "version"),
        ("kind: svm\nversion: trm-v1.0.0\n", "kind"),
        ("kind: trm\nversion: trm-v1.0.0\noptim: {lr: -1}\n", "optim.lr"),
        ("kind: trm\nversion: trm-v1.0.0\ntrm: {width: 3}\n", "trm.width"),
        ("kind: [\n", "not valid YAML"),
        ("kind: cnn\nversion: cnn-v1.0.0\noptim: {reviewed_weight: 0}\n", "reviewed_weight"),
        (
            "kind: cnn\nversion: cnn-v1.0.0\noptim: {reviewed_weight: 3}\n",
            "reviewed_weight needs data.protocol production",
        ),
    ],
)
def test_bad_configs_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)
