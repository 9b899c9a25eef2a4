"""Files written whole or not at all: write a temporary file in the target's folder, fsync it, rename
it over the target (a rename within a folder is atomic), then fsync the folder so that the rename
itself survives a power cut. A crash, a full disk or an exception midway leaves the old file in
place; an exception leaves no temporary file behind.

A process killed outright (kill -9, out of memory) cannot delete its temporary file. Temporary
names say who wrote them, `.<target>.<host>.<pid>.<random>.tmp`, so the next write to the same
target removes the orphans: those of a process of this host that no longer exists, and any that
nobody has touched for a day (another host's, or the older `.<target>.<random>.tmp` names). Only
that pattern, beside that target, is ever deleted.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from pathlib import Path

STALE_S = 24 * 3600          # a temporary file nobody touched for this long is an orphan whoever wrote it


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):      # exists but is not ours, or we cannot tell: keep its file
        return True
    return True


def stale_temps(path, now: float | None = None) -> list[Path]:
    """The orphaned temporary files of `path` (see the module doc); nothing else in its folder."""
    path = Path(path)
    now = time.time() if now is None else now
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.tmp$")
    out = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return out
    for e in entries:
        m = pattern.match(e.name)
        if m is None or not e.is_file(follow_symlinks=False):
            continue
        try:
            old = now - e.stat(follow_symlinks=False).st_mtime > STALE_S
        except OSError:
            continue
        dead = m["host"] == _host() and m["pid"] is not None and not _pid_alive(int(m["pid"]))
        if old or dead:
            out.append(Path(e.path))
    return out


def remove_stale_temps(path) -> list[Path]:
    """Delete the orphaned temporary files of `path`; returns those it deleted."""
    removed = []
    for p in stale_temps(path):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def fsync_dir(folder) -> None:
    """Make a rename or a new file in `folder` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """`f` is an open binary file at the temporary path `tmp` beside `path` (for writers that want
    a path, not a file object, `tmp` is that path). `commit()` puts it in place; `abort()` deletes
    it. As a context manager: commit on success, abort on an exception."""

    def __init__(self, path):
        self.path = Path(path)
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise NotADirectoryError(f"cannot write {self.path}: {self.path.parent} is a file, not a folder")
        if self.path.is_dir():
            raise IsADirectoryError(f"cannot write {self.path}: it is a folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.{_host()}.{os.getpid()}.",
                                        suffix=".tmp")
        self.f = os.fdopen(fd, "wb")

    def commit(self) -> Path:
        try:
            self.f.flush()
            os.fsync(self.f.fileno())     # fsync is per file, not per descriptor: this also flushes
            self.f.close()                # what another writer wrote to `tmp` by name
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        fsync_dir(self.path.parent)       # the rename itself, on disk
        return self.path

    def abort(self) -> None:
        self.f.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def atomic_write_bytes(path, data: bytes) -> None:
    with AtomicFile(path) as a:
        a.f.write(data)
