"""Readers and writers of real wafer map data: WM-811K (npz and the original pickle), SEMI G85.

Every reader returns maps in the canonical encoding (0 pass, 1 fail, 2 out of wafer).
"""

from wafercore.readers.g85 import G85Map, read_g85, write_g85
from wafercore.readers.lswmd import convert_lswmd, read_lswmd
from wafercore.readers.npz import file_sha256, read_npz, write_npz

__all__ = [
    "G85Map",
    "convert_lswmd",
    "file_sha256",
    "read_g85",
    "read_lswmd",
    "read_npz",
    "write_g85",
    "write_npz",
]
