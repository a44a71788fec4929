"""The one atomic writer: old or new content, never a part; no temp file left; durable rename."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_vpstest import _files
from pytest_vpstest._files import temp_name, write_bytes_atomic, write_json_atomic, write_text_atomic


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_writes_the_new_content_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"  # the parent is created
    write_text_atomic(target, "one\n")
    write_text_atomic(target, "two\n")
    assert target.read_text() == "two\n"
    assert _leftovers(target.parent) == []


def test_json_is_indented_sorted_and_ends_with_a_newline(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    text = target.read_text()
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1, 2], "b": 1}


def test_unserialisable_json_leaves_the_old_file_untouched(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"v": object()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("failing", ["write", "fsync", "replace", "before_replace"])
def test_a_failed_write_keeps_the_old_file_and_removes_the_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "lease.json"
    write_bytes_atomic(target, b"old")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    hook = None
    if failing == "before_replace":
        hook = boom
    else:
        monkeypatch.setattr(_files.os, failing, boom)
    with pytest.raises(OSError, match="No space"):
        write_bytes_atomic(target, b"new content", before_replace=hook)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_file_is_fsynced_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "results.json"
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(_files.os, "fsync", fsync)
    monkeypatch.setattr(_files.os, "replace", replace)
    write_text_atomic(target, "x")
    assert len(events) == 3, events
    assert events[0][0] == "fsync" and Path(events[0][1]).name.startswith(".results.json.")
    assert events[1] == ("replace", str(target))
    assert events[2] == ("fsync", str(tmp_path)), "the directory holding the rename must be fsynced"


def test_temp_names_are_hidden_unique_and_match_the_store_sweep(tmp_path: Path) -> None:
    a, b = temp_name(tmp_path / "state.json"), temp_name(tmp_path / "state.json")
    assert a != b and a.parent == tmp_path and a.name.startswith(".state.json.")
    # The state store removes ``.*.json.*.tmp`` left by a writer killed before its rename.
    assert a.match(".*.json.*.tmp")


@settings(max_examples=20, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=4096), min_size=1, max_size=6))
def test_a_reader_sees_some_whole_version_never_a_mix(contents: list[bytes]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        target = Path(d) / "doc"
        versions = {b"start"} | set(contents)
        write_bytes_atomic(target, b"start")
        seen: list[bytes] = []
        done = threading.Event()

        def reader() -> None:
            while not done.is_set():
                seen.append(target.read_bytes())

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for data in contents * 5:
                write_bytes_atomic(target, data)
        finally:
            done.set()
            thread.join()
        assert seen and set(seen) <= versions
        assert target.read_bytes() == contents[-1]
