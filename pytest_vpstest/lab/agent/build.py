"""Build the agent into one self-contained file: ``python3 -m pytest_vpstest.lab.agent.build OUT.pyz``.

The zipapp holds this package under the top-level name ``vpstest_agent`` plus a ``__main__.py``
that runs its command line, with the shebang ``/usr/bin/env python3``: it needs nothing on the
target but Python ≥ 3.11. ``build_zipapp`` is importable so a workspace that carries a copy of
this package's source can build it with its own small script.

Every module is packed twice: its source and its bytecode, compiled by the building interpreter
(unchecked-hash ``.pyc``, which zipimport loads without comparing timestamps). A zipapp cannot
write a bytecode cache, so without them every run compiled all the sources it imports: most of a
probe's start-up. A target Python of another minor version ignores the bytecode (its magic number
differs) and compiles the sources as before.
"""

from __future__ import annotations

import argparse
import py_compile
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

__all__ = ["INTERPRETER", "PACKAGE_NAME", "build_zipapp", "main"]

PACKAGE_NAME = "vpstest_agent"
INTERPRETER = "/usr/bin/env python3"
_ENTRY = f"""# Entry point of the agent zipapp.
import sys

if sys.version_info < (3, 11):
    sys.exit("agent: Python 3.11 or newer is required (found %d.%d)" % sys.version_info[:2])

from {PACKAGE_NAME}.cli import main

sys.exit(main())
"""


def build_zipapp(source_dir: Path | str, out_path: Path | str, *, bytecode: bool = True) -> Path:
    """Zip the agent package in ``source_dir`` (the directory holding ``cli.py``) into ``out_path``.

    ``*.py`` files and (unless ``bytecode`` is false) their bytecode are packed, nothing else from
    the source directory; the result is executable. Returns ``out_path``.
    """
    source, out = Path(source_dir), Path(out_path)
    if not (source / "cli.py").is_file() or not (source / "__init__.py").is_file():
        raise FileNotFoundError(f"{source} does not hold the agent package (no cli.py / __init__.py)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="agent-build-") as tmp:
        staging = Path(tmp)
        package = staging / PACKAGE_NAME
        package.mkdir()
        for file in sorted(source.glob("*.py")):
            shutil.copy2(file, package / file.name)
        (staging / "__main__.py").write_text(_ENTRY)
        for file in [staging / "__main__.py", *sorted(package.glob("*.py"))] if bytecode else []:
            py_compile.compile(
                str(file),
                cfile=str(file.with_suffix(".pyc")),
                dfile=file.relative_to(staging).as_posix(),
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
        partial = out.with_name(out.name + ".partial")
        zipapp.create_archive(staging, partial, interpreter=INTERPRETER, compressed=True)
        partial.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent-build", description="Build the agent zipapp.")
    parser.add_argument("out", type=Path, help="output file, e.g. dist/agent.pyz")
    parser.add_argument(
        "--source",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="the agent package source directory (default: this package)",
    )
    args = parser.parse_args(argv)
    try:
        out = build_zipapp(args.source, args.out)
    except (OSError, zipapp.ZipAppError, py_compile.PyCompileError) as exc:
        print(f"agent-build: {exc}", file=sys.stderr)
        return 1
    print(f"built {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
