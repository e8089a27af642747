"""What an installed copy holds: every package folder, the shipped models, the migrations."""

from __future__ import annotations

import tomllib
from pathlib import Path

from wafercore.runtime import ModelRuntime
from wafercore.shipped import DEFAULT_MODEL_VERSION, shipped_model_dir

ROOT = Path(__file__).resolve().parents[2]


def _config() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        setuptools: dict[str, object] = tomllib.load(file)["tool"]["setuptools"]
    return setuptools


def _package_folders() -> set[str]:
    """Dotted names of every folder with an __init__.py, where pyproject maps them from."""
    mapping = {name: ROOT / folder for name, folder in _config()["package-dir"].items() if name}  # type: ignore[attr-defined]
    found = set()
    tops = [
        ROOT / name
        for name in ("cloud", "edge", "fab_server", "launcher", "review_ui", "wafercore")
    ]
    for top in [*tops, *mapping.values()]:
        for init in top.rglob("__init__.py"):
            relative = init.parent.relative_to(top)
            base = next((name for name, folder in mapping.items() if folder == top), top.name)
            found.add(".".join([base, *relative.parts]))
    return found


def test_every_package_folder_is_listed_in_pyproject() -> None:
    # pyproject lists packages by hand (models/ installs as wafer_models): a new subpackage
    # left out would be missing from every wheel and image, while editable installs work.
    assert set(_config()["packages"]) == _package_folders()  # type: ignore[call-overload]


def test_the_migrations_and_every_model_file_are_package_data() -> None:
    data = _config()["package-data"]
    assert "migrations/versions/*.py" in data["fab_server"]  # type: ignore[index]
    model_files = {p for p in (ROOT / "models").rglob("*") if p.is_file()}
    depth = {len(p.relative_to(ROOT / "models").parts) for p in model_files} - {1}
    patterns = data["wafer_models"]  # type: ignore[index]
    assert {len(p.split("/")) for p in patterns} >= depth


def test_the_shipped_default_model_is_found_and_loads() -> None:
    folder = shipped_model_dir()
    assert folder.is_absolute() and folder.name == DEFAULT_MODEL_VERSION
    assert ModelRuntime.load(folder).version == DEFAULT_MODEL_VERSION
