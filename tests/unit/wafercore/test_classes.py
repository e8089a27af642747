import pytest

from wafercore.classes import CLASS_NAMES, NUM_CLASSES, DefectClass


def test_ids_and_labels_follow_design_table() -> None:
    table = [
        (0, "None", "none"),
        (1, "Center", "Center"),
        (2, "Donut", "Donut"),
        (3, "Edge-Loc", "Edge-Loc"),
        (4, "Edge-Ring", "Edge-Ring"),
        (5, "Loc", "Loc"),
        (6, "Near-Full", "Near-full"),
        (7, "Random", "Random"),
        (8, "Scratch", "Scratch"),
    ]
    assert NUM_CLASSES == 9
    assert [(int(c), c.display_name, c.wm811k_label) for c in DefectClass] == table
    assert CLASS_NAMES == tuple(name for _, name, _ in table)


@pytest.mark.parametrize("cls", list(DefectClass))
def test_lookups_round_trip(cls: DefectClass) -> None:
    assert DefectClass.from_wm811k_label(cls.wm811k_label) is cls
    assert DefectClass.from_display_name(cls.display_name.upper()) is cls
    assert cls.root_cause


def test_unknown_labels_are_named_in_the_error() -> None:
    with pytest.raises(KeyError, match="'near-full'"):
        DefectClass.from_wm811k_label("near-full")  # WM-811K spells it Near-full
    with pytest.raises(KeyError, match="Blob"):
        DefectClass.from_display_name("Blob")
