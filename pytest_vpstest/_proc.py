"""Local process facts shared by the store, the runner and the lab."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True when ``pid`` names a running process on this machine.

    A zombie counts as dead: it can no longer write anything, and where PID 1 does not reap
    (containers, this project's CI) a killed process stays a zombie indefinitely.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        # No procfs (not Linux): the signal check is all we have.
        return True
