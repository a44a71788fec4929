"""Multi-file artifacts: a directory or an archive (``.tar.gz``, ``.tgz``, ``.zip``) deployed as a whole.

A single file is deployed as it is (``fleet/deploy.py``). A **bundle** — a directory or an archive —
is checked and turned into one gzip'd tar here, on this machine, before any node is touched:

- every member is a regular file, a directory or a symlink that stays inside the bundle; names are
  relative and never climb out (``..``); anything else (an absolute name, a device, a link to
  ``/etc``) is refused in one line naming the artifact and the member;
- the module's ``binary`` — a path relative to the bundle's root, e.g. ``bin/node`` — must be a
  regular file in it (``{bin}`` names it on the nodes);
- a ``.tar.gz``/``.tgz`` is uploaded byte for byte as it is; a directory or a ``.zip`` is packed
  into a new tar (file modes kept: a zip's unix modes, a directory's own), so the node needs
  only ``tar`` and ``gzip``.

:func:`is_bundle` decides from a name alone when it can (an archive suffix, or a trailing ``/``), so
commands that run without the built artifact at hand (rollback, probes) agree with deploy.

On a node (:func:`install_script`, :func:`rollback_script`; ``fleet/node.py`` names the paths) the
tar is unpacked into a new ``<install>/releases/<id>/`` beside the running one; only when it is whole
and holds the binary does the symlink ``current`` move to it, by a rename (atomic: ``{bin}`` =
``current/<binary>`` always names a complete release). The release it replaced stays, named by
``previous``, for rollback; older releases are removed.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import stat
import tarfile
import zipfile
from pathlib import Path

from pytest_vpstest.errors import DeployError

__all__ = [
    "ARCHIVE_SUFFIXES",
    "BUNDLE_CURRENT",
    "BUNDLE_PREVIOUS",
    "BUNDLE_RELEASES",
    "install_script",
    "is_bundle",
    "pack_bundle",
    "rollback_script",
]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
# Inside a node's install path: the unpacked releases and the symlinks naming two of them.
BUNDLE_RELEASES = "releases"
BUNDLE_CURRENT = "current"
BUNDLE_PREVIOUS = "previous"


def is_bundle(artifact: str | Path) -> bool:
    """A directory or an archive: by its name (archive suffix, trailing ``/``), else an existing
    local directory."""
    text = str(artifact)
    if text.endswith("/") or text.lower().endswith(ARCHIVE_SUFFIXES):
        return True
    return Path(artifact).is_dir()


def pack_bundle(artifact: Path, binary: str, workdir: Path) -> Path:
    """The gzip'd tar to upload for the bundle ``artifact`` (itself when it is one), after checking
    every member and that ``binary`` is a regular file in it. :class:`DeployError` otherwise."""
    binary = _member_name(artifact, binary, what="the binary")
    name = artifact.name.lower()
    if artifact.is_dir():
        out = workdir / "bundle.tar.gz"
        with tarfile.open(out, "w:gz") as tar:
            for path in sorted(artifact.rglob("*")):
                rel = path.relative_to(artifact).as_posix()
                _check_link(artifact, rel, path)
                tar.add(path, arcname=rel, recursive=False)
        _check_tar(out, artifact, binary)
        return out
    if not artifact.is_file():
        raise DeployError(f"artifact {artifact} does not exist")
    if name.endswith((".tar.gz", ".tgz")):
        _check_tar(artifact, artifact, binary)
        return artifact
    if name.endswith(".zip"):
        return _zip_to_tar(artifact, binary, workdir / "bundle.tar.gz")
    raise DeployError(f"artifact {artifact} is not a directory, .tar.gz, .tgz or .zip")


def _member_name(artifact: Path, name: str, what: str = "member") -> str:
    clean = posixpath.normpath(name.strip())
    while clean.startswith("./"):
        clean = clean[2:]
    if not clean or clean == "." or clean.startswith("/") or clean == ".." or clean.startswith("../"):
        raise DeployError(f"artifact {artifact}: {what} {name!r} is not a path inside the artifact")
    return clean


def _check_link(root: Path, rel: str, path: Path) -> None:
    if not path.is_symlink():
        mode = path.lstat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise DeployError(f"artifact {root}: {rel} is neither a file, a directory nor a symlink")
        return
    _link_inside(root, rel, os.readlink(path))


def _link_inside(artifact: Path, rel: str, target: str) -> None:
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if target.startswith("/") or joined == ".." or joined.startswith("../"):
        raise DeployError(f"artifact {artifact}: symlink {rel} -> {target} points outside the artifact")


def _check_tar(tar_path: Path, artifact: Path, binary: str) -> None:
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DeployError(f"artifact {artifact}: not a readable .tar.gz ({exc})") from None
    files: set[str] = set()
    for m in members:
        if m.isdir() and posixpath.normpath(m.name) == ".":
            continue  # the root itself, as `tar -C dir -czf out.tgz .` writes it
        rel = _member_name(artifact, m.name)
        if m.issym():
            _link_inside(artifact, rel, m.linkname)
        elif m.islnk():
            _member_name(artifact, m.linkname, what=f"hard link {rel} ->")
        elif not (m.isfile() or m.isdir()):
            raise DeployError(f"artifact {artifact}: {rel} is neither a file, a directory nor a symlink")
        if m.isfile():
            files.add(rel)
    if binary not in files:
        raise DeployError(
            f"artifact {artifact} has no file {binary} (the module's binary, relative to the artifact's root)"
        )


def _zip_to_tar(artifact: Path, binary: str, out: Path) -> Path:
    try:
        with zipfile.ZipFile(artifact) as zf, tarfile.open(out, "w:gz") as tar:
            for info in zf.infolist():
                rel = _member_name(artifact, info.filename)
                mode = info.external_attr >> 16
                entry = tarfile.TarInfo(rel)
                entry.mtime = int(_zip_time(info))
                if info.is_dir():
                    entry.type, entry.mode = tarfile.DIRTYPE, (mode & 0o7777) or 0o755
                    tar.addfile(entry)
                elif stat.S_ISLNK(mode):
                    target = zf.read(info).decode()
                    _link_inside(artifact, rel, target)
                    entry.type, entry.linkname, entry.mode = tarfile.SYMTYPE, target, 0o777
                    tar.addfile(entry)
                else:
                    data = zf.read(info)
                    entry.size, entry.mode = len(data), (mode & 0o7777) or 0o644
                    with zf.open(info) as src:
                        tar.addfile(entry, src)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DeployError(f"artifact {artifact}: not a readable .zip ({exc})") from None
    _check_tar(out, artifact, binary)
    return out


def _zip_time(info: zipfile.ZipInfo) -> float:
    import datetime

    try:
        return datetime.datetime(*info.date_time).timestamp()
    except ValueError:
        return 0.0


def install_script(install_path: str, upload: str, release: str, binary: str) -> str:
    """Shell script (for ``sh -c``) that unpacks ``upload`` into ``releases/<release>``, checks the
    binary, keeps the current release as ``previous``, switches ``current`` atomically, removes older
    releases and the upload, and prints ``kept=yes|no`` (whether a previous release is kept)."""
    q = shlex.quote
    rel = posixpath.join(BUNDLE_RELEASES, release)
    cur, prev = BUNDLE_CURRENT, BUNDLE_PREVIOUS
    return "; ".join([
        f"set -e; cd {q(install_path)}; mkdir -p {BUNDLE_RELEASES}; rm -rf {q(rel + '.tmp')}",
        f"mkdir {q(rel + '.tmp')}",
        f"tar -xzf {q(upload)} -C {q(rel + '.tmp')} --no-same-owner || {{ rm -rf {q(rel + '.tmp')}; "
        f"echo 'unpacking the artifact failed' >&2; exit 3; }}",
        f"if [ ! -f {q(rel + '.tmp/' + binary)} ]; then echo {q(f'no file {binary} in the artifact')} >&2; "
        f"rm -rf {q(rel + '.tmp')}; exit 3; fi",
        f"chmod +x {q(rel + '.tmp/' + binary)}; mv {q(rel + '.tmp')} {q(rel)}; rm -f {q(upload)}",
        # The release in use becomes `previous` (a symlink renamed into place), then `current` moves.
        f"kept=no; if [ -L {cur} ]; then ln -sfn \"$(readlink {cur})\" .{prev}.new; "
        f"mv -fT .{prev}.new {prev}; kept=yes; fi",
        f"ln -sfn {q(rel)} .{cur}.new; mv -fT .{cur}.new {cur}",
        f"keep1=$(readlink {cur}); keep2=$(readlink {prev} 2>/dev/null || true)",
        f'for d in {BUNDLE_RELEASES}/*; do [ "$d" = "$keep1" ] || [ "$d" = "$keep2" ] || rm -rf "$d"; done',
        "echo kept=$kept",
    ])


def rollback_script(install_path: str) -> str:
    """Shell script: point ``current`` at the ``previous`` release (atomic rename), drop the
    ``previous`` link and remove the release rolled back from; exit 3 when there is no previous."""
    cur, prev = BUNDLE_CURRENT, BUNDLE_PREVIOUS
    return "; ".join([
        f"set -e; cd {shlex.quote(install_path)}; [ -L {prev} ] || exit 3",
        f"old=$(readlink {cur} 2>/dev/null || true); back=$(readlink {prev})",
        f'ln -sfn "$back" .{cur}.new; mv -fT .{cur}.new {cur}; rm -f {prev}',
        'if [ -n "$old" ] && [ "$old" != "$back" ]; then rm -rf "$old"; fi',
    ])
