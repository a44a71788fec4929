"""The one way the package replaces a file on disk.

Every file a reader may look at while a writer runs (state, lease, results, evidence, outbox events,
lab records, inventories, fetched logs, stop requests) is written here: a temp file in the same
directory, written whole, flushed and fsynced, renamed over the target, and the directory fsynced so
the rename itself survives a power loss. A reader sees the old content or the new, never a mix; a
failed write leaves the old file and no temp file behind.

Temp files are named ``.<name>.<pid>.<random>.tmp``: hidden, and recognisable by owners that sweep
up after a writer killed between write and rename (the state store does, under its lock).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "fsync_dir",
    "temp_name",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def temp_name(path: Path) -> Path:
    """A fresh temp path beside ``path`` (unique per process and call)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def fsync_dir(path: Path) -> None:
    """Make a rename, creation or removal in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(
    path: Path, data: bytes, *, mode: int = 0o644, before_replace: Callable[[], None] | None = None
) -> None:
    """Replace ``path`` with ``data`` durably: readers see the old or the new file, never a part.

    Creates the parent directory if needed. On any failure the temp file is removed and the old
    file is left as it was. ``before_replace`` runs between the fsync and the rename (a test seam
    for crash tests; a raise there aborts the write).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str, *, encoding: str = "utf-8", mode: int = 0o644) -> None:
    """:func:`write_bytes_atomic` for text."""
    write_bytes_atomic(path, text.encode(encoding), mode=mode)


def write_json_atomic(path: Path, payload: Any, *, mode: int = 0o644) -> None:
    """``payload`` as indented, key-sorted JSON plus a newline, via :func:`write_bytes_atomic`.

    A payload that is not JSON-serialisable raises before anything touches the disk.
    """
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"), mode=mode)
