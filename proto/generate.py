"""Generate the Python code of the protobuf contracts: the only generator (``make proto``).

Usage::

    python proto/generate.py            # regenerate in place, beside the .proto files
    python proto/generate.py --out DIR  # write the same files under DIR/waferplatform/v1/

Runs ``grpc_tools.protoc`` in-process with the proto root (this directory) and grpc_tools'
bundled well-known types (``google/protobuf/*.proto``) on the include path, and writes
``*_pb2.py``, ``*_pb2_grpc.py`` and ``*_pb2.pyi``. The output depends only on the .proto files
and the pinned grpcio-tools version (no paths, no timestamps), which is what lets
``tests/unit/proto`` regenerate and compare byte for byte. Generated files are never edited.
"""

from __future__ import annotations

import argparse
import importlib.resources
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
"""Proto root: imports are written from here (``waferplatform/v1/common.proto``)."""

PACKAGE_DIR = Path("waferplatform")
"""Folder under the proto root (and under the output) that holds the contracts."""

GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")
"""Endings of the files protoc generates; everything else in the package is hand-written."""


def proto_files(root: Path = PROTO_ROOT) -> list[str]:
    """The .proto files under ``root/waferplatform``, as sorted paths relative to ``root``."""
    return sorted(p.relative_to(root).as_posix() for p in (root / PACKAGE_DIR).rglob("*.proto"))


def generated_files(out: Path) -> list[Path]:
    """The generated files under ``out/waferplatform``, as sorted paths relative to ``out``."""
    base = out / PACKAGE_DIR
    if not base.is_dir():
        return []
    return sorted(
        p.relative_to(out)
        for p in base.rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    )


def _run_protoc(out: Path) -> None:
    """Run protoc on every contract, writing into ``out`` (which must exist)."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # dev-only: imported on use

    files = proto_files()
    if not files:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PACKAGE_DIR}")
    bundled = importlib.resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    with importlib.resources.as_file(bundled) as well_known:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={PROTO_ROOT}",
                f"--proto_path={well_known}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                f"--pyi_out={out}",
                *files,
            ]
        )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")


def generate(out: Path = PROTO_ROOT) -> list[Path]:
    """Generate the code of every contract into ``out``.

    Generates into a scratch folder first, so a protoc error leaves ``out`` untouched; then
    replaces the generated files under ``out/waferplatform`` (deleting those whose .proto is gone)
    and leaves hand-written files such as ``__init__.py`` alone.

    Args:
        out: Folder that receives ``waferplatform/v1/...``; the proto root by default.

    Returns:
        The generated files, relative to ``out``, sorted.
    """
    out = out.resolve()
    with tempfile.TemporaryDirectory(prefix="waferplatform-proto-") as scratch:
        scratch_dir = Path(scratch)
        _run_protoc(scratch_dir)
        fresh = generated_files(scratch_dir)
        for stale in generated_files(out):
            (out / stale).unlink()
        for rel in fresh:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(scratch_dir / rel, target)
    return fresh


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=PROTO_ROOT,
        help="folder that receives waferplatform/v1/... (default: in place, %(default)s)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for rel in generate(args.out):
        print(args.out / rel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
