"""SEMI G85 XML wafer maps, the format test stations and probers hand over.

A file holds ``<Maps>`` with one ``<Map WaferId=...>`` per wafer; each map has a ``<Device>``
whose attributes give the grid (``Rows``, ``Columns``), how bin codes are written (``BinType``:
``ASCII`` one character, ``Decimal``, ``HexaDecimal`` two hex digits, ``Integer2`` four hex
digits) and the code of cells without a die (``NullBin``). ``<Bin BinCode BinQuality>`` lists
the bins and ``<Data><Row>`` the codes, one row per element, separated by whitespace or packed
at a fixed width. Files come with or without the ``http://www.semi.org`` namespace.

Bins become the canonical encoding: the null bin is ``OUT``, a bin whose ``BinQuality`` is
``Pass`` is ``PASS``, and every other bin is ``FAIL``, including qualities this module does not
know: a die that was not declared good is not counted as good.

Only the standard library parses the XML, and documents with a DOCTYPE (where entity
declarations, and so "billion laughs" expansions and external entities, live) are refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn
from xml.etree import ElementTree
from xml.parsers import expat
from xml.sax.saxutils import quoteattr

import numpy as np
import numpy.typing as npt

from wafercore.encoding import FAIL, OUT, PASS
from wafercore.errors import InvalidInput
from wafercore.validation import check_map_shape

FORMAT_REVISION = "SEMI G85 0703"
"""``FormatRevision`` written on every map."""
SEMI_NAMESPACE = "http://www.semi.org"
"""Namespace some G85 files put their elements in."""
BIN_TYPES = ("ASCII", "Decimal", "HexaDecimal", "Integer2")
"""The ``BinType`` values of the standard (read case-insensitively)."""

# Width of one code when a row is packed without separators; Decimal has none fixed.
_PACKED_WIDTH = {"ascii": 1, "hexadecimal": 2, "integer2": 4}
_WRITE_RANGE = {"Decimal": 999, "HexaDecimal": 0xFF}
# Characters XML 1.0 cannot carry at all, not even escaped.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, eq=False)
class G85Map:
    """One wafer of a G85 file.

    Attributes:
        wafer_id: the map's ``WaferId``.
        lot_id: the device's ``LotId``.
        product_id: the device's ``ProductId``.
        map: (rows, cols) uint8 in the canonical encoding, read-only.
        bins: bin code (as written in the file) -> ``BinQuality``; empty for maps not read
            from a file.
    """

    wafer_id: str
    lot_id: str
    product_id: str
    map: npt.NDArray[np.uint8]
    bins: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.map)
        if arr.ndim != 2 or arr.size == 0:
            raise InvalidInput("map", f"must be a non-empty 2-D array, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > OUT:
            raise InvalidInput("map", "values must be 0 (pass), 1 (fail) or 2 (out of wafer)")
        # Copy and freeze: a frozen dataclass whose array could be edited in place is not.
        frozen = arr.astype(np.uint8, copy=True)
        frozen.flags.writeable = False
        object.__setattr__(self, "map", frozen)
        object.__setattr__(self, "bins", MappingProxyType(dict(self.bins)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, G85Map):
            return NotImplemented
        return (
            (self.wafer_id, self.lot_id, self.product_id)
            == (other.wafer_id, other.lot_id, other.product_id)
            and np.array_equal(self.map, other.map)
            and dict(self.bins) == dict(other.bins)
        )

    __hash__ = None  # type: ignore[assignment]  # holds an array and a mapping


def read_g85(source: str | bytes | os.PathLike[str]) -> list[G85Map]:
    """Read every wafer map in a G85 document.

    Args:
        source: the document itself (``str`` or ``bytes``) or the path of a file
            (``pathlib.Path`` or another ``os.PathLike``).

    Returns:
        The maps in document order.

    Raises:
        InvalidInput: the document is not well-formed XML, has a DOCTYPE, or is not a valid
            G85 map; ``field`` names the offending part (``Map[0].Device.Data.Row[3]``).
        OSError: the file cannot be read.
    """
    data = source if isinstance(source, str | bytes) else Path(source).read_bytes()
    root = _parse(data)
    kind = _local(root.tag)
    if kind == "Map":
        elements = [root]
    elif kind == "Maps":
        elements = _children(root, "Map")
    else:
        raise InvalidInput("Maps", f"root element is <{kind}>, expected <Maps> or one <Map>")
    if not elements:
        raise InvalidInput("Maps", "contains no <Map>")
    return [_read_map(el, f"Map[{i}]") for i, el in enumerate(elements)]


def write_g85(
    maps: Iterable[G85Map],
    *,
    bin_type: str = "Decimal",
    pass_bin: int = 1,
    fail_bin: int = 2,
    null_bin: int = 255,
) -> str:
    """Write wafer maps as a G85 document.

    Each map gets two bins, ``pass_bin`` (quality ``Pass``) and ``fail_bin`` (``Fail``), and
    cells outside the wafer get ``null_bin``. Rows are space-separated codes in CDATA.

    Args:
        maps: the wafers; their ``bins`` are ignored.
        bin_type: ``Decimal`` (codes zero-padded to a common width) or ``HexaDecimal``
            (two hex digits).
        pass_bin: code of passing die.
        fail_bin: code of failing die.
        null_bin: code of cells without a die (255, written ``FF`` in hexadecimal).

    Returns:
        The XML document.

    Raises:
        InvalidInput: an id holds characters XML cannot carry, or the codes are not distinct
            and within the bin type's range.
    """
    if bin_type not in _WRITE_RANGE:
        raise InvalidInput("bin_type", f"must be one of {sorted(_WRITE_RANGE)}, got {bin_type!r}")
    codes = (pass_bin, fail_bin, null_bin)
    if len(set(codes)) != 3 or not all(0 <= c <= _WRITE_RANGE[bin_type] for c in codes):
        raise InvalidInput(
            "bins", f"pass, fail and null codes must be distinct, 0..{_WRITE_RANGE[bin_type]}"
        )
    width = 2 if bin_type == "HexaDecimal" else len(str(max(codes)))
    # Code spelling indexed by canonical value, so a whole map is spelled with one lookup.
    by_value = np.empty(3, dtype=f"<U{width}")
    for value, code in ((PASS, pass_bin), (FAIL, fail_bin), (OUT, null_bin)):
        by_value[value] = f"{code:02X}" if bin_type == "HexaDecimal" else f"{code:0{width}d}"

    out = ['<?xml version="1.0" encoding="UTF-8"?>', "<Maps>"]
    for i, wafer in enumerate(maps):
        for name in ("wafer_id", "lot_id", "product_id"):
            text = getattr(wafer, name)
            if not isinstance(text, str) or _NOT_XML.search(text):
                raise InvalidInput(f"maps[{i}].{name}", "must be text XML can carry")
        rows, cols = wafer.map.shape
        counts = np.bincount(wafer.map.ravel(), minlength=3)
        out.append(
            f"  <Map xmlns:semi={quoteattr(SEMI_NAMESPACE)} WaferId={quoteattr(wafer.wafer_id)}"
            f" FormatRevision={quoteattr(FORMAT_REVISION)}>"
        )
        out.append(
            f"    <Device ProductId={quoteattr(wafer.product_id)}"
            f' LotId={quoteattr(wafer.lot_id)} Rows="{rows}" Columns="{cols}"'
            f' Orientation="0" BinType="{bin_type}" NullBin="{by_value[OUT]}">'
        )
        for value, quality in ((PASS, "Pass"), (FAIL, "Fail")):
            out.append(
                f'      <Bin BinCode="{by_value[value]}" BinCount="{counts[value]}"'
                f' BinQuality="{quality}" BinDescription="{quality}"/>'
            )
        out.append("      <Data>")
        cells = by_value[wafer.map]
        out.extend(f"        <Row><![CDATA[{' '.join(row)}]]></Row>" for row in cells)
        out.extend(("      </Data>", "    </Device>", "  </Map>"))
    out.append("</Maps>")
    return "\n".join(out) + "\n"


def _read_map(el: ElementTree.Element, where: str) -> G85Map:
    devices = _children(el, "Device")
    if len(devices) != 1:
        reason = "missing" if not devices else f"{len(devices)} <Device> elements, expected one"
        raise InvalidInput(f"{where}.Device", reason)
    device, where = devices[0], f"{where}.Device"
    rows = _positive_int(device, "Rows", where)
    cols = _positive_int(device, "Columns", where)
    # Before anything is allocated: Columns="1000000000000" must be a clear error, not a
    # MemoryError.
    check_map_shape(rows, cols, where)
    bin_type = (device.get("BinType") or "").lower()
    if bin_type not in {t.lower() for t in BIN_TYPES}:
        raise InvalidInput(
            f"{where}.BinType",
            f"must be one of {', '.join(BIN_TYPES)}, got {device.get('BinType')!r}",
        )

    def key(code: str, at: str) -> int | str:
        try:
            return _code_key(code, bin_type)
        except ValueError:
            raise InvalidInput(at, f"{code!r} is not a {device.get('BinType')} bin code") from None

    bins: dict[str, str] = {}
    value_of: dict[int | str, int] = {}
    for j, bin_el in enumerate(_children(device, "Bin")):
        at = f"{where}.Bin[{j}].BinCode"
        code = bin_el.get("BinCode")
        if code is None:
            raise InvalidInput(at, "missing")
        code = code.strip()
        quality = bin_el.get("BinQuality", "")
        k = key(code, at)
        if k in value_of:
            raise InvalidInput(at, f"bin code {code!r} is listed twice")
        bins[code] = quality
        value_of[k] = PASS if quality.strip().lower() == "pass" else FAIL
    null = device.get("NullBin")
    if null is not None and null.strip():
        # The null bin wins over a <Bin> with the same code: it says there is no die.
        value_of[key(null.strip(), f"{where}.NullBin")] = OUT

    grid = _read_rows(device, where, rows, cols, bin_type, value_of, key)
    return G85Map(
        wafer_id=el.get("WaferId", ""),
        lot_id=device.get("LotId", ""),
        product_id=device.get("ProductId", ""),
        map=grid,
        bins=bins,
    )


def _read_rows(
    device: ElementTree.Element,
    where: str,
    rows: int,
    cols: int,
    bin_type: str,
    value_of: dict[int | str, int],
    key: Callable[[str, str], int | str],
) -> npt.NDArray[np.uint8]:
    data = _children(device, "Data")
    if not data:
        raise InvalidInput(f"{where}.Data", "missing")
    row_elements = _children(data[0], "Row")
    if len(row_elements) != rows:
        raise InvalidInput(
            f"{where}.Data", f"has {len(row_elements)} <Row> elements but Rows is {rows}"
        )
    grid = np.empty((rows, cols), dtype=np.uint8)
    # Maps have few distinct codes: resolve each distinct spelling once.
    resolved: dict[str, int] = {}
    for r, row_el in enumerate(row_elements):
        at = f"{where}.Data.Row[{r}]"
        tokens = _split_row(row_el.text or "", cols, bin_type)
        if len(tokens) != cols:
            raise InvalidInput(at, f"has {len(tokens)} bin codes but Columns is {cols}")
        for c, token in enumerate(tokens):
            value = resolved.get(token)
            if value is None:
                value = value_of.get(key(token, at))
                if value is None:
                    raise InvalidInput(at, f"unknown bin code {token!r}: no <Bin> and not NullBin")
                resolved[token] = value
            grid[r, c] = value
    return grid


def _split_row(text: str, cols: int, bin_type: str) -> list[str]:
    text = text.strip()
    if any(ch.isspace() for ch in text):
        return text.split()
    # Packed rows: a fixed width per code; Decimal's is whatever divides the row evenly.
    width = _PACKED_WIDTH.get(bin_type) or max(1, len(text) // cols)
    return [text[i : i + width] for i in range(0, len(text), width)]


def _code_key(code: str, bin_type: str) -> int | str:
    # Compare codes by value so "1", "01" and "001" are the same bin.
    if bin_type == "ascii":
        return code
    return int(code, 10 if bin_type == "decimal" else 16)


def _positive_int(el: ElementTree.Element, name: str, where: str) -> int:
    raw = el.get(name)
    try:
        value = int(raw or "")
    except ValueError:
        raise InvalidInput(f"{where}.{name}", f"must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise InvalidInput(f"{where}.{name}", f"must be a positive integer, got {raw!r}")
    return value


def _children(el: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [child for child in el if _local(child.tag) == name]


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _parse(data: str | bytes) -> ElementTree.Element:
    """Parse with expat directly, so a DOCTYPE can be refused before anything in it is read."""
    parser = expat.ParserCreate(namespace_separator="}")
    builder = ElementTree.TreeBuilder()

    def clark(name: str) -> str:
        # expat gives "uri}local"; ElementTree spells it "{uri}local".
        return "{" + name if "}" in name else name

    def start(tag: str, attrs: dict[str, str]) -> None:
        builder.start(clark(tag), {clark(k): v for k, v in attrs.items()})

    def end(tag: str) -> None:
        builder.end(clark(tag))

    def refuse(*_: Any) -> NoReturn:
        raise InvalidInput("xml", "DOCTYPE and entity declarations are not accepted")

    parser.buffer_text = True
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        hint = ""
        if isinstance(data, str) and not data.lstrip().startswith("<"):
            hint = " (a str is the document itself: pass a pathlib.Path to read a file)"
        raise InvalidInput("xml", f"not well-formed: {exc}{hint}") from None
    return builder.close()
