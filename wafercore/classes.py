"""The nine defect pattern classes, defined once for the whole platform.

Class ids are part of the protobuf contract (``DefectClass`` in ``common.proto``) and of every
trained model's output layer: never reorder them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class DefectClass(IntEnum):
    """Wafer defect patterns, in the order of DESIGN.md §3."""

    NONE = 0
    CENTER = 1
    DONUT = 2
    EDGE_LOC = 3
    EDGE_RING = 4
    LOC = 5
    NEAR_FULL = 6
    RANDOM = 7
    SCRATCH = 8

    @property
    def display_name(self) -> str:
        """Name shown to people (``Edge-Ring``)."""
        return _INFO[self].display_name

    @property
    def wm811k_label(self) -> str:
        """Label used by WM-811K's ``failureType`` column (``Near-full``)."""
        return _INFO[self].wm811k_label

    @property
    def root_cause(self) -> str:
        """Typical physical root cause, from the product brief."""
        return _INFO[self].root_cause

    @classmethod
    def from_wm811k_label(cls, label: str) -> DefectClass:
        """Class for a WM-811K ``failureType`` label.

        Raises:
            KeyError: the label is not one of WM-811K's nine.
        """
        try:
            return _BY_WM811K[label]
        except KeyError:
            raise KeyError(f"unknown WM-811K label {label!r}") from None

    @classmethod
    def from_display_name(cls, name: str) -> DefectClass:
        """Class for a display name (``Edge-Ring``), case-insensitive.

        Raises:
            KeyError: no class has that name.
        """
        try:
            return _BY_DISPLAY[name.lower()]
        except KeyError:
            raise KeyError(f"unknown defect class {name!r}") from None


@dataclass(frozen=True)
class _ClassInfo:
    display_name: str
    wm811k_label: str
    root_cause: str


_INFO: dict[DefectClass, _ClassInfo] = {
    DefectClass.NONE: _ClassInfo("None", "none", "No systematic defect"),
    DefectClass.CENTER: _ClassInfo("Center", "Center", "Photolithography focus / etch centre bias"),
    DefectClass.DONUT: _ClassInfo("Donut", "Donut", "Annular chemical distribution issue"),
    DefectClass.EDGE_LOC: _ClassInfo("Edge-Loc", "Edge-Loc", "Localised edge contamination"),
    DefectClass.EDGE_RING: _ClassInfo(
        "Edge-Ring", "Edge-Ring", "CMP edge exclusion / spin-coating non-uniformity"
    ),
    DefectClass.LOC: _ClassInfo("Loc", "Loc", "Localised particle contamination"),
    DefectClass.NEAR_FULL: _ClassInfo("Near-Full", "Near-full", "Severe process excursion"),
    DefectClass.RANDOM: _ClassInfo("Random", "Random", "Stochastic particle defects"),
    DefectClass.SCRATCH: _ClassInfo("Scratch", "Scratch", "Mechanical handling damage"),
}
_BY_WM811K = {info.wm811k_label: cls for cls, info in _INFO.items()}
_BY_DISPLAY = {info.display_name.lower(): cls for cls, info in _INFO.items()}

NUM_CLASSES = len(DefectClass)
CLASS_NAMES: tuple[str, ...] = tuple(c.display_name for c in DefectClass)
"""Display names indexed by class id."""
