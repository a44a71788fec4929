"""Multi-file artifacts (a directory, .tar.gz/.tgz or .zip) through the session seam, with sessions
that run commands locally: checked and packed before any node is touched, uploaded with their
checksum checked, unpacked beside the current release and switched to atomically, the previous one
kept for rollback, {bin} naming the module's binary inside; a failed unpack leaves the running
release in place."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_vpstest.config import ModuleConfig
from pytest_vpstest.errors import ConfigError, DeployError
from pytest_vpstest.fleet.artifact import is_bundle, pack_bundle
from pytest_vpstest.fleet.deploy import deploy, rollback
from pytest_vpstest.fleet.node import plan_node
from pytest_vpstest.fleet.remote import SessionPool
from pytest_vpstest.fleet.services import ProcessManager
from tests.support.fake_session import local_session_factory
from tests.unit.fleet.test_deploy import SERVICE, World, files_registry

BINARY = "bin/agent-bin"


def tree(root: Path, version: str) -> Path:
    """A release tree: the service under bin/, a data file it does not need, a relative symlink."""
    (root / "bin").mkdir(parents=True)
    (root / "share").mkdir()
    (root / "bin" / "agent-bin").write_text(SERVICE.format(version=version))
    (root / "bin" / "agent-bin").chmod(0o755)
    (root / "share" / "peers.txt").write_text(f"peers of {version}\n")
    (root / "share" / "current-peers").symlink_to("peers.txt")
    return root


def tgz(src: Path, out: Path) -> Path:
    """As ``tar -C src -czf out .`` writes it: a ``.`` member, then ``./``-prefixed names."""
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src, arcname=".")
    return out


def zipped(src: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(src.rglob("*")):
            info = zipfile.ZipInfo(p.relative_to(src).as_posix() + ("/" if p.is_dir() else ""))
            info.external_attr = (p.lstat().st_mode & 0xFFFF) << 16
            data = os.readlink(p).encode() if p.is_symlink() else (b"" if p.is_dir() else p.read_bytes())
            zf.writestr(info, data)
    return out


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, ["n1", "n2"])
    w.config = replace(w.config, modules=(("agent", ModuleConfig(binary=BINARY)),))
    yield w
    with SessionPool(w.inventory, session_factory=local_session_factory()) as pool:
        for node in w.nodes:
            plan = plan_node(node, w.config, Path("dist/"))
            session = pool.session(node.name)
            ProcessManager(session, install_path=plan.install_path, log_dir=plan.log_dir).stop(plan.service)


def run(world: World, pool: SessionPool, artifact: Path) -> object:
    return deploy(
        pool, world.inventory, world.config, artifact, registry_query=files_registry, verify_seconds=0.1
    )


def test_bundles_install_beside_the_current_release_and_roll_back(world: World) -> None:
    factory = local_session_factory()
    t = world.tmp
    with SessionPool(world.inventory, session_factory=factory) as pool:
        report = run(world, pool, tree(t / "v1", "v1"))  # a directory
        assert report.succeeded == 2  # type: ignore[attr-defined]
        plan = plan_node(world.inventory.node("n1"), world.config, t / "v1")
        install = Path(plan.install_path)
        assert plan.bundle and plan.binary == str(install / "current" / BINARY)
        assert os.readlink(install / "current").startswith("releases/")
        assert "v1" in Path(plan.binary).read_text() and os.access(plan.binary, os.X_OK)
        assert (install / "current" / "share" / "current-peers").read_text() == "peers of v1\n"
        assert sorted(p.name for p in install.iterdir()) == ["current", "logs", "releases", "run"]
        manager = ProcessManager(pool.session("n1"), install_path=plan.install_path, log_dir=plan.log_dir)
        assert manager.logs(plan.service).splitlines()[-1].startswith("v1 run --node n1")
        v1 = os.readlink(install / "current")

        report = run(world, pool, tgz(tree(t / "v2", "v2"), t / "agent-v2.tar.gz"))
        assert report.per_node["n1"].previous_kept  # type: ignore[attr-defined]
        assert os.readlink(install / "previous") == v1 and "v2" in Path(plan.binary).read_text()
        v2 = os.readlink(install / "current")

        run(world, pool, zipped(tree(t / "v3", "v3"), t / "agent-v3.zip"))
        assert "v3" in Path(plan.binary).read_text() and os.access(plan.binary, os.X_OK)
        assert os.readlink(install / "previous") == v2
        # Exactly the current and the previous release are kept.
        assert sorted(p.name for p in (install / "releases").iterdir()) == sorted(
            [Path(v2).name, Path(os.readlink(install / "current")).name]
        )
        assert manager.logs(plan.service).splitlines()[-1].startswith("v3 run")

        back = rollback(pool, world.inventory, world.config, ["n1"], verify_seconds=0.1)
        assert back.succeeded == 1
        assert os.readlink(install / "current") == v2 and not os.path.lexists(install / "previous")
        assert [p.name for p in (install / "releases").iterdir()] == [Path(v2).name]
        assert manager.logs(plan.service).splitlines()[-1].startswith("v2 run")
        again = rollback(pool, world.inventory, world.config, ["n1"], verify_seconds=0.1)
        assert "no previous release" in (again.per_node["n1"].error or "")


def test_the_upload_is_the_archive_itself_checked_by_its_checksum(world: World) -> None:
    archive = tgz(tree(world.tmp / "v1", "v1"), world.tmp / "agent.tgz")
    factory = local_session_factory()
    with SessionPool(world.inventory, session_factory=factory) as pool:
        run(world, pool, archive)
    ops = factory.sessions["n1"].ops  # type: ignore[attr-defined]
    puts = [arg for kind, arg in ops if kind == "put"]
    assert len(puts) == 1 and "/.bundle.upload-" in puts[0]
    assert any(kind == "run" and cmd.startswith("sha256sum ") for kind, cmd in ops)


def test_a_failed_unpack_leaves_the_running_release_in_place(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SessionPool(world.inventory, session_factory=local_session_factory()) as pool:
        run(world, pool, tree(world.tmp / "v1", "v1"))
        plan = plan_node(world.inventory.node("n1"), world.config, world.tmp / "v1")
        before = os.readlink(Path(plan.install_path) / "current")
        broken = world.tmp / "broken-bin"
        broken.mkdir()
        (broken / "tar").write_text("#!/bin/sh\necho 'tar: write error: disk full' >&2\nexit 2\n")
        (broken / "tar").chmod(0o755)
        monkeypatch.setenv("PATH", f"{broken}:{os.environ['PATH']}")
        with pytest.raises(DeployError, match=r"install: .*unpacking the artifact failed"):
            run(world, pool, tree(world.tmp / "v2", "v2"))
    install = Path(plan.install_path)
    assert os.readlink(install / "current") == before and "v1" in Path(plan.binary).read_text()
    assert [p.name for p in (install / "releases").iterdir()] == [Path(before).name]  # no half release
    assert not list(install.glob(".bundle.upload-*"))


def _tar_with(tmp: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    out = tmp / "bad.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        ok = tarfile.TarInfo(BINARY)
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"#!\n"))
        tar.addfile(member, io.BytesIO(data) if data else None)
    return out


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.linkname = kind, link
    return m


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("../evil"), "member '../evil' is not a path inside the artifact"),
        (_member("/etc/cron.d/x"), "member '/etc/cron.d/x' is not a path inside the artifact"),
        (_member("bin/sh", tarfile.SYMTYPE, "/etc/shadow"), "symlink bin/sh -> /etc/shadow points outside"),
        (_member("up", tarfile.SYMTYPE, "../../x"), "symlink up -> ../../x points outside"),
        (_member("dev", tarfile.CHRTYPE), "dev is neither a file, a directory nor a symlink"),
    ],
)
def test_a_hostile_archive_is_refused_before_any_node_is_touched(
    world: World, member: tarfile.TarInfo, message: str
) -> None:
    archive = _tar_with(world.tmp, member)
    factory = local_session_factory()
    with SessionPool(world.inventory, session_factory=factory) as pool, pytest.raises(DeployError) as info:
        run(world, pool, archive)
    assert message in str(info.value) and str(archive) in str(info.value)
    assert not getattr(factory, "sessions", {})  # no node was contacted


def test_bundle_mistakes_are_one_line_errors(world: World, tmp_path: Path) -> None:
    t = tree(tmp_path / "rel", "v1")
    with pytest.raises(DeployError, match=r"has no file bin/other \(the module's binary"):
        pack_bundle(t, "bin/other", tmp_path)
    (t / "bin" / "escape").symlink_to("/etc/passwd")
    with pytest.raises(DeployError, match="symlink bin/escape -> /etc/passwd points outside"):
        pack_bundle(t, BINARY, tmp_path)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(DeployError, match=r"not a readable \.zip"):
        pack_bundle(tmp_path / "junk.zip", BINARY, tmp_path)
    no_module = replace(world.config, modules=())
    with SessionPool(world.inventory, session_factory=local_session_factory()) as pool, pytest.raises(
        ConfigError, match="name the binary inside it as the module's binary"
    ):
        deploy(pool, world.inventory, no_module, tgz(tree(tmp_path / "v9", "v9"), tmp_path / "a.tgz"))


def test_a_zip_keeps_unix_modes_and_what_counts_as_a_bundle(tmp_path: Path) -> None:
    packed = pack_bundle(zipped(tree(tmp_path / "v1", "v1"), tmp_path / "a.zip"), BINARY, tmp_path)
    with tarfile.open(packed) as tar:
        assert stat.S_IMODE(tar.getmember(BINARY).mode) == 0o755
        assert tar.getmember("share/current-peers").linkname == "peers.txt"
    assert is_bundle("dist/") and is_bundle("a.TGZ") and is_bundle("x.zip") and is_bundle(tmp_path)
    assert not is_bundle(tmp_path / "v1" / BINARY) and not is_bundle("target/release/node")
