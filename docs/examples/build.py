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
OUT = HERE / "dist" / "vps-agent.pyz"


def _agent_source() -> Path:
    """The reference agent's sources: this checkout's, else (a copy of this file elsewhere) the
    installed package's."""
    in_checkout = HERE.parents[1] / "pytest_vpstest" / "lab" / "agent"
    if (in_checkout / "build.py").is_file():
        return in_checkout
    try:
        spec = importlib.util.find_spec("pytest_vpstest.lab.agent")
    except ImportError:
        spec = None
    if spec is not None and spec.origin:
        return Path(spec.origin).parent
    return in_checkout  # main() reports that it is missing


SOURCE = _agent_source()


def main(argv: list[str]) -> int:
    if "--check" in argv:
        for path in sorted(SOURCE.glob("*.py")):
            compile(path.read_text(encoding="utf-8"), str(path), "exec")
        print(f"check: {len(list(SOURCE.glob('*.py')))} source files compile")
        return 0
    if not (SOURCE / "build.py").is_file():
        print("build.py: the reference agent's sources are neither in this checkout nor installed for "
              f"{sys.executable} (run it from docs/examples, or with the Python of pytest-vpstest)",
              file=sys.stderr)
        return 1
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
