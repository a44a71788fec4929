"""Fake batch command for the plugin tests: reads probe request lines (JSON) on stdin and answers
each with the fake agent's single-probe answer plus ``ref``, one line per request as it finishes.

Usage: ``python3 fakebatch.py NODE``; every start is counted in ``$FAKE_FLEET_DIR/batch.calls``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

AGENT = Path(__file__).with_name("fakeagent.sh")


def answer(node: str, request: dict[str, object]) -> dict[str, object]:
    action = request.get("action")
    if action == "connect":
        args = ["connect", node, str(request["peer"]), str(request["method"])]
    elif action == "throughput":
        args = ["throughput", node, str(request["peer"]), str(request["seconds"])]
    elif action == "publish":
        args = ["publish", node, str(request["topic"])]
    elif action == "received":
        args = ["received", node, str(request["id"])]
    elif action == "crdt":
        args = ["crdt", node, str(request["increment"])]
    else:
        return {"ok": False, "error": f"fake batch: unsupported action {action!r}"}
    env = {**os.environ, "FAKE_VIA": "batch"}
    out = subprocess.run(["sh", str(AGENT), *args], capture_output=True, text=True, env=env).stdout
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        return {"ok": False, "error": f"fake agent said {out.strip()!r}"}
    data: dict[str, object] = json.loads(lines[-1])
    return data


def main() -> int:
    node = sys.argv[1]
    with open(Path(os.environ["FAKE_FLEET_DIR"]) / "batch.calls", "a", encoding="utf-8") as fh:
        fh.write(f"{node}\n")
    print("fake batch starting (a log line the harness ignores)", flush=True)
    lock = threading.Lock()
    threads = []

    def serve(request: dict[str, object]) -> None:
        result = answer(node, request) | {"ref": request.get("ref")}
        with lock:
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()

    for line in sys.stdin:
        if line.strip():
            t = threading.Thread(target=serve, args=(json.loads(line),))
            t.start()
            threads.append(t)
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
