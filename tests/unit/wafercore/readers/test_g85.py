"""SEMI G85 reading (foreign files, every bin type, malformed input) and round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wafercore.encoding import FAIL, OUT, PASS
from wafercore.errors import InvalidInput
from wafercore.readers.g85 import G85Map, read_g85, write_g85

# A foreign file as a prober might send it: default SEMI namespace, hexadecimal bins with some
# rows packed and some spaced, a retest bin of a quality we do not know, a reference device.
HEX_WITH_NAMESPACE = """<?xml version="1.0" encoding="UTF-8"?>
<Maps xmlns="http://www.semi.org">
  <Map WaferId="W-07" FormatRevision="SEMI G85 0703">
    <Device ProductId="PX-200" LotId="LOT&amp;42" CreateDate="2024010112000000"
            SupplierName="ACME" Rows="4" Columns="5" Orientation="0" OriginLocation="3"
            BinType="HexaDecimal" NullBin="FF">
      <ReferenceDevice ReferenceDeviceX="2" ReferenceDeviceY="0"/>
      <Bin BinCode="01" BinCount="9" BinQuality="Pass" BinDescription="Good"/>
      <Bin BinCode="0A" BinCount="2" BinQuality="Fail" BinDescription="Open"/>
      <Bin BinCode="1F" BinCount="1" BinQuality="Retest" BinDescription="Marginal"/>
      <Data MapName="Map" MapVersion="2">
        <Row><![CDATA[FF01010AFF]]></Row>
        <Row><![CDATA[01 01 1F 01 01]]></Row>
        <Row><![CDATA[0a 01 01 01 01]]></Row>
        <Row>
          FF FF 01 FF FF
        </Row>
      </Data>
    </Device>
  </Map>
  <Map WaferId="W-08" FormatRevision="SEMI G85 0703">
    <Device ProductId="PX-200" LotId="LOT&amp;42" Rows="1" Columns="2" BinType="HexaDecimal"
            NullBin="FF">
      <Bin BinCode="01" BinQuality="Pass"/>
      <Data><Row><![CDATA[01FF]]></Row></Data>
    </Device>
  </Map>
</Maps>
"""

# The common G85 sample shape: namespace declared with a prefix on <Map>, decimal bins.
DECIMAL_WITH_PREFIX = """<?xml version="1.0"?>
<Maps>
  <Map xmlns:semi="http://www.semi.org" WaferId="12" FormatRevision="SEMI G85 0703">
    <Device ProductId="P" LotId="L" Rows="3" Columns="3" BinType="Decimal" NullBin="255">
      <Bin BinCode="000" BinQuality="Fail" BinDescription="No pick"/>
      <Bin BinCode="001" BinQuality="pass" BinDescription="Pick"/>
      <Bin BinCode="091" BinQuality="Fail" BinDescription="Ugly"/>
      <Data>
        <Row><![CDATA[255 001 255]]></Row>
        <Row><![CDATA[001 091 000 ]]></Row>
        <Row><![CDATA[255 1 255]]></Row>
      </Data>
    </Device>
  </Map>
</Maps>
"""


def test_reads_a_foreign_hexadecimal_file_with_the_semi_namespace() -> None:
    first, second = read_g85(HEX_WITH_NAMESPACE)
    assert (first.wafer_id, first.lot_id, first.product_id) == ("W-07", "LOT&42", "PX-200")
    assert first.map.tolist() == [
        [OUT, PASS, PASS, FAIL, OUT],
        [PASS, PASS, FAIL, PASS, PASS],  # quality "Retest" is not "Pass": a fail
        [FAIL, PASS, PASS, PASS, PASS],
        [OUT, OUT, PASS, OUT, OUT],
    ]
    assert dict(first.bins) == {"01": "Pass", "0A": "Fail", "1F": "Retest"}
    assert second.wafer_id == "W-08"
    assert second.map.tolist() == [[PASS, OUT]]


def test_reads_decimal_bins_with_a_prefixed_namespace_declaration() -> None:
    (wafer,) = read_g85(DECIMAL_WITH_PREFIX)
    assert wafer.wafer_id == "12"
    # "1" and "001" are the same bin; "pass" is matched case-insensitively.
    assert wafer.map.tolist() == [[OUT, PASS, OUT], [PASS, FAIL, FAIL], [OUT, PASS, OUT]]


@pytest.mark.parametrize(
    ("bin_type", "null", "bins", "rows", "expected"),
    [
        (
            "ASCII",
            ".",
            ("1", "X"),
            ["..1..", ".1X1.", "..X.."],
            [[OUT, OUT, PASS, OUT, OUT], [OUT, PASS, FAIL, PASS, OUT], [OUT, OUT, FAIL, OUT, OUT]],
        ),
        (
            "Integer2",
            "FFFF",
            ("0001", "0102"),
            ["FFFF00010102", "0001 0102 FFFF"],
            [[OUT, PASS, FAIL], [PASS, FAIL, OUT]],
        ),
        (
            "Hexadecimal",  # spelling varies in the wild: BinType is read case-insensitively
            "ff",
            ("01", "02"),
            ["ff0102", "02 01 FF"],
            [[OUT, PASS, FAIL], [FAIL, PASS, OUT]],
        ),
    ],
)
def test_every_bin_type_is_read(
    bin_type: str, null: str, bins: tuple[str, str], rows: list[str], expected: list[list[int]]
) -> None:
    doc = f"""<Maps><Map WaferId="w"><Device Rows="{len(rows)}" Columns="{len(expected[0])}"
        BinType="{bin_type}" NullBin="{null}">
        <Bin BinCode="{bins[0]}" BinQuality="Pass"/><Bin BinCode="{bins[1]}" BinQuality="Fail"/>
        <Data>{"".join(f"<Row>{r}</Row>" for r in rows)}</Data></Device></Map></Maps>"""
    (wafer,) = read_g85(doc)
    assert wafer.map.tolist() == expected


def test_reads_bytes_and_paths(tmp_path: Path) -> None:
    path = tmp_path / "w.xml"
    path.write_text(DECIMAL_WITH_PREFIX, encoding="utf-8")
    from_path = read_g85(path)
    assert from_path == read_g85(DECIMAL_WITH_PREFIX.encode("utf-8"))
    assert from_path == read_g85(DECIMAL_WITH_PREFIX)


def _device(attrs: str = "", body: str | None = None) -> str:
    attrs = attrs or 'Rows="2" Columns="2" BinType="Decimal" NullBin="255"'
    if body is None:
        body = "<Data><Row>1 2</Row><Row>255 1</Row></Data>"
    bins = '<Bin BinCode="1" BinQuality="Pass"/><Bin BinCode="2" BinQuality="Fail"/>'
    return f'<Maps><Map WaferId="w"><Device {attrs}>{bins}{body}</Device></Map></Maps>'


def test_the_helper_document_is_valid() -> None:
    (wafer,) = read_g85(_device())
    assert wafer.map.tolist() == [[PASS, FAIL], [OUT, PASS]]


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (_device('Rows="x" Columns="2" BinType="Decimal" NullBin="255"'), "Map[0].Device.Rows"),
        (_device('Rows="0" Columns="2" BinType="Decimal" NullBin="255"'), "Map[0].Device.Rows"),
        (_device('Columns="2" BinType="Decimal" NullBin="255"'), "Map[0].Device.Rows"),
        (_device('Rows="2" Columns="-2" BinType="Decimal" NullBin="255"'), "Map[0].Device.Columns"),
        (_device('Rows="2" Columns="2" BinType="Octal" NullBin="255"'), "Map[0].Device.BinType"),
        (_device('Rows="2" Columns="2" BinType="Decimal" NullBin="zz"'), "Map[0].Device.NullBin"),
        (_device(body="<Data><Row>1 2</Row><Row>1 2 1</Row></Data>"), "Map[0].Device.Data.Row[1]"),
        (_device(body="<Data><Row>1 2</Row><Row>1 7</Row></Data>"), "Map[0].Device.Data.Row[1]"),
        (_device(body="<Data><Row>1 2</Row><Row>1 x</Row></Data>"), "Map[0].Device.Data.Row[1]"),
        (_device(body="<Data><Row>1 2</Row></Data>"), "Map[0].Device.Data"),
        (_device(body=""), "Map[0].Device.Data"),
        ('<Maps><Map WaferId="w"/></Maps>', "Map[0].Device"),
        ("<Maps/>", "Maps"),
        ("<Wafer/>", "Maps"),
        ("<Maps><Map>", "xml"),
        ("not xml at all", "xml"),
    ],
)
def test_malformed_input_names_the_field(doc: str, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        read_g85(doc)
    assert info.value.field == field
    assert info.value.reason


@pytest.mark.parametrize(
    "size", ['Rows="1" Columns="1000000000000"', 'Rows="513" Columns="1"', 'Rows="1" Columns="513"']
)
def test_a_declared_size_beyond_512_is_refused_before_anything_is_allocated(size: str) -> None:
    # One row of a trillion columns used to be allocated first: a MemoryError, an HTTP 500.
    doc = _device(f'{size} BinType="Decimal" NullBin="255"', body="<Data><Row>1</Row></Data>")
    with pytest.raises(InvalidInput) as info:
        read_g85(doc)
    assert info.value.field == "Map[0].Device"
    assert "1..512" in info.value.reason


def test_bin_listed_twice_is_rejected() -> None:
    doc = _device().replace(
        '<Bin BinCode="2"', '<Bin BinCode="001" BinQuality="Fail"/><Bin BinCode="2"'
    )
    with pytest.raises(InvalidInput) as info:
        read_g85(doc)
    assert info.value.field == "Map[0].Device.Bin[1].BinCode"


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<Maps><Map WaferId="&lol4;"/></Maps>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE Maps [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<Maps><Map WaferId="&secret;"/></Maps>
"""


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, EXTERNAL_ENTITY, "<!DOCTYPE Maps><Maps/>"])
def test_doctype_and_entities_are_refused(doc: str) -> None:
    with pytest.raises(InvalidInput, match="DOCTYPE") as info:
        read_g85(doc)
    assert info.value.field == "xml"


def test_undeclared_entity_is_not_well_formed() -> None:
    with pytest.raises(InvalidInput) as info:
        read_g85('<Maps><Map WaferId="&x;"/></Maps>')
    assert info.value.field == "xml"


def _wafer(grid: list[list[int]], wafer_id: str = "W1") -> G85Map:
    return G85Map(wafer_id=wafer_id, lot_id="L1", product_id="P1", map=np.array(grid))


def test_write_produces_g85_with_pass_fail_and_null_bins() -> None:
    doc = write_g85([_wafer([[OUT, PASS], [FAIL, PASS]])])
    assert 'FormatRevision="SEMI G85 0703"' in doc
    assert 'BinType="Decimal" NullBin="255"' in doc
    assert '<Bin BinCode="001" BinCount="2" BinQuality="Pass"' in doc
    assert '<Bin BinCode="002" BinCount="1" BinQuality="Fail"' in doc
    assert "<Row><![CDATA[255 001]]></Row>" in doc
    hexdoc = write_g85([_wafer([[OUT, PASS]])], bin_type="HexaDecimal", fail_bin=0x0A)
    assert 'BinType="HexaDecimal" NullBin="FF"' in hexdoc
    assert "<Row><![CDATA[FF 01]]></Row>" in hexdoc
    assert '<Bin BinCode="0A" BinCount="0" BinQuality="Fail"' in hexdoc


def test_round_trip_keeps_ids_and_maps() -> None:
    wafers = [
        _wafer([[OUT, PASS, OUT], [FAIL, PASS, FAIL]], wafer_id='A<1>&"2"'),
        _wafer([[PASS]], wafer_id="B\tC\nD"),
    ]
    for bin_type in ("Decimal", "HexaDecimal"):
        back = read_g85(write_g85(wafers, bin_type=bin_type))
        assert [(w.wafer_id, w.lot_id, w.product_id) for w in back] == [
            (w.wafer_id, w.lot_id, w.product_id) for w in wafers
        ]
        assert all(np.array_equal(a.map, b.map) for a, b in zip(back, wafers, strict=True))


_ID_TEXT = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_categories=("Cs", "Cc", "Cn", "Co"), include_characters="\t\n\r"
    ),
    max_size=12,
)
_MAPS = hnp.arrays(
    np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12), elements=st.integers(0, 2)
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_ID_TEXT, _ID_TEXT, _ID_TEXT, _MAPS), min_size=1, max_size=4),
    st.sampled_from(["Decimal", "HexaDecimal"]),
    st.lists(st.integers(0, 255), min_size=3, max_size=3, unique=True),
)
def test_round_trip_of_generated_maps(
    rows: list[tuple[str, str, str, npt.NDArray[np.uint8]]], bin_type: str, codes: list[int]
) -> None:
    wafers = [G85Map(wafer_id=w, lot_id=lo, product_id=p, map=m) for w, lo, p, m in rows]
    doc = write_g85(
        wafers, bin_type=bin_type, pass_bin=codes[0], fail_bin=codes[1], null_bin=codes[2]
    )
    back = read_g85(doc)
    assert [dataclasses.replace(w, bins={}) for w in back] == wafers


def test_write_rejects_text_xml_cannot_carry() -> None:
    with pytest.raises(InvalidInput) as info:
        write_g85([_wafer([[PASS]], wafer_id="bad\x00id")])
    assert info.value.field == "maps[0].wafer_id"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pass_bin": 1, "fail_bin": 1},
        {"null_bin": 256, "bin_type": "HexaDecimal"},
        {"null_bin": -1},
        {"bin_type": "ASCII"},
    ],
)
def test_write_rejects_unusable_bin_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        write_g85([_wafer([[PASS]])], **kwargs)  # type: ignore[arg-type]


def test_g85map_is_frozen_and_validates_its_map() -> None:
    wafer = _wafer([[PASS, FAIL]])
    with pytest.raises(dataclasses.FrozenInstanceError):
        wafer.wafer_id = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        wafer.map[0, 0] = FAIL
    with pytest.raises(InvalidInput):
        _wafer([[0, 3]])
    with pytest.raises(InvalidInput):
        G85Map(wafer_id="w", lot_id="", product_id="", map=np.zeros(4, np.uint8))
