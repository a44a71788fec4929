"""Build the reference agent of this checkout into dist/vps-agent.pyz.

The example project's local build (``build.command`` in lab-config.yaml). It needs only the
standard library, so any ``python3`` runs it. ``--check`` compiles the sources without building,
which is what the loop runs as the verification command after a fix.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / "pytest_vpstest" / "lab" / "agent"
OUT = HERE / "dist" / "vps-agent.pyz"


def main(argv: list[str]) -> int:
    if "--check" in argv:
        for path in sorted(SOURCE.glob("*.py")):
            compile(path.read_text(encoding="utf-8"), str(path), "exec")
        print(f"check: {len(list(SOURCE.glob('*.py')))} source files compile")
        return 0
    spec = importlib.util.spec_from_file_location("agent_build", SOURCE / "build.py")
    if spec is None or spec.loader is None:
        print(f"build.py: cannot load {SOURCE / 'build.py'}", file=sys.stderr)
        return 1
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build_zipapp(SOURCE, OUT)
    print(f"built {built} ({built.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
