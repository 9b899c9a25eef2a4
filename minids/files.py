"""Files written whole or not at all: write a temporary file in the target's folder, flush it to
disk, then rename it over the target (a rename within a folder is atomic). A crash, a full disk or
an exception midway leaves the old file in place and no temporary file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class AtomicFile:
    """`f` is an open binary file at the temporary path `tmp` beside `path` (for writers that want
    a path, not a file object, `tmp` is that path). `commit()` puts it in place; `abort()` deletes
    it. As a context manager: commit on success, abort on an exception."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.f = os.fdopen(fd, "wb")

    def commit(self) -> Path:
        try:
            self.f.flush()
            os.fsync(self.f.fileno())     # also what another writer wrote to `tmp` by name
            self.f.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
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
