"""The models shipped with the platform, found from the installed package, from any folder.

The repository's ``models/`` folder is installed as the package ``wafer_models`` (see
``pyproject.toml``), so an installed node, a container or a service unit finds the default
model without a path relative to its working directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL_VERSION = "cnn-v2.6.1"
"""The model the edge, the fab server and the demo serve until told otherwise."""


def shipped_model_dir(version: str = DEFAULT_MODEL_VERSION) -> Path:
    """The folder of a shipped model (``model.onnx``, ``model.json``, its report and card).

    Args:
        version: a folder of ``models/`` (``trm-v1.1.0``, ``cnn-v1.1.0``).

    Returns:
        An absolute path; it may not exist when ``version`` is not shipped (loading it then
        fails with a message naming the path).
    """
    return Path(str(resources.files("wafer_models").joinpath(version))).resolve()
