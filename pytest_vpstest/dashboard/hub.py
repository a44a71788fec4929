"""Fan-out of change notices to the page's server-sent-event streams, and the poller that finds them.

The poller looks at each project's state file, transitions log and dashboard records, and the
history database, every ``interval`` seconds while at least one page is connected; a change becomes
a ``changed`` notice naming the project. Runner POSTs and finished actions notify at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Hub"]


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, 0)
    return (st.st_size, st.st_mtime_ns)


class Hub:
    """Subscribers are asyncio queues of ready-to-send SSE frames (bytes)."""

    def __init__(self, state_dir: Path, projects: Callable[[], list[str]], interval: float = 0.2) -> None:
        self.state_dir = Path(state_dir)
        self._projects = projects
        self.interval = interval
        self._queues: set[asyncio.Queue[bytes]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stamps: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.closing = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stamps = self._scan()
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- subscribers -------------------------------------------------------------------------
    def subscribe(self) -> asyncio.Queue[bytes]:
        q: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)
        self._queues.add(q)
        self._wake.set()
        return q

    def unsubscribe(self, q: asyncio.Queue[bytes]) -> None:
        self._queues.discard(q)

    def publish(self, event: str, data: Any) -> None:
        """Send to every subscriber (call from the event loop)."""
        frame = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
        for q in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):  # a stalled page misses notices, never blocks
                q.put_nowait(frame)

    def shutdown(self) -> None:
        """Thread-safe: end every open stream (so a stopping server does not wait for the pages)."""
        self.closing = True
        self._call(self._end_streams)

    def _end_streams(self) -> None:
        for q in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(b"")

    def changed(self, project: str) -> None:
        """Thread-safe: tell pages that ``project`` changed."""
        self._call(self.publish, "changed", {"project": project})

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the server has stopped: nobody to tell
                self._loop.call_soon_threadsafe(fn, *args)

    # -- polling -----------------------------------------------------------------------------
    def _scan(self) -> dict[str, Any]:
        stamps: dict[str, Any] = {}
        base = str(self.state_dir)
        history = (
            _stat(os.path.join(base, "history.sqlite")),
            _stat(os.path.join(base, "history.sqlite-wal")),
        )
        for p in self._projects():
            d = os.path.join(base, p)
            stamps[p] = (
                _stat(os.path.join(d, "state.json")),
                _stat(os.path.join(d, "transitions.jsonl")),
                _stat(os.path.join(d, "dashboard", "rollbacks.jsonl")),
                history,
            )
        return stamps

    async def _poll(self) -> None:
        while True:
            if not self._queues:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self.interval)
            stamps = self._scan()  # a few stat() calls: cheaper than a thread hop
            for project, stamp in stamps.items():
                if self._stamps.get(project) != stamp:
                    self.publish("changed", {"project": project})
            if set(self._stamps) - set(stamps):
                self.publish("changed", {"project": None})
            self._stamps = stamps
