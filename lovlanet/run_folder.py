"""A training run's output folder as a contract.

* A folder that already holds a run is refused unless the run is resumed (``--resume``) or
  replaced (``--overwrite``): a new run never silently overwrites ``best.pt`` or appends to
  another run's metrics.
* One run at a time: ``OUT/.lock`` is held with ``flock`` for the whole run and removed when the run
  ends, by success or by error. A second run on the same folder is refused with the first one's pid
  and host; the kernel drops the lock when a run dies, even by ``kill -9``, so a stale lock file
  never blocks. (A lock taken on a file that the previous holder had just removed is dropped and
  taken again on the new file, so two runs never hold two different files.)
* Temporary files a killed run left behind (``.NAME.*.tmp`` of the atomic writer) are removed once
  the lock is held.

Nothing here creates the folder before :meth:`RunFolder.claim`, which the trainer calls only after
the configuration, the data and the model have been checked.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from .cli import check_output_folder
from .data.common import DataError

# What a run writes; --overwrite removes exactly these.
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "train_config.json", "resumes.jsonl")
RUN_DIRS = ("tensorboard",)
LOCK_NAME = ".lock"


class RunFolderError(DataError):
    """The output folder cannot take this run; the message says why and what to pass."""


class RunFolder:
    """``check()`` (no side effects), then ``claim()`` (create, lock, clean) and ``release()``."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        self.resume, self.overwrite = resume, overwrite
        self._lock = None

    def used(self) -> list[str]:
        """The run files already in the folder."""
        if not self.path.is_dir():
            return []
        return [name for name in RUN_FILES + RUN_DIRS if (self.path / name).exists()]

    def check(self) -> None:
        """Raise :class:`RunFolderError` when this run cannot use the folder; changes nothing."""
        if self.resume and self.overwrite:
            raise RunFolderError("--resume continues the run in --out and --overwrite replaces it: pass one")
        try:
            check_output_folder(self.path)
        except DataError as exc:
            raise RunFolderError(str(exc)) from None
        used = self.used()
        if used and not (self.resume or self.overwrite):
            raise RunFolderError(f"--out {self.path} already holds a run ({', '.join(used)}): pass --resume to "
                                 f"continue it, --overwrite to replace it, or choose another folder")

    def claim(self) -> None:
        """Create the folder, take the lock, remove stale temporaries and, with ``overwrite``, the old run."""
        self.check()
        self.path.mkdir(parents=True, exist_ok=True)
        handle = self._lock_file()
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        self._lock = handle
        for stale in self.path.glob(".*.tmp"):  # the atomic writer's temporaries from a killed run
            stale.unlink(missing_ok=True)
        if self.overwrite:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            for name in RUN_DIRS:
                shutil.rmtree(self.path / name, ignore_errors=True)

    def _lock_file(self):
        """``OUT/.lock`` opened and flock'd by this process, or :class:`RunFolderError` naming the holder."""
        lock = self.path / LOCK_NAME
        while True:
            handle = open(lock, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise RunFolderError(f"--out {self.path} is in use by another training run ({holder}); wait for "
                                     f"it to finish or choose another folder") from None
            try:
                same = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return handle
            handle.close()  # the previous run removed the file we locked: lock the current one

    def release(self) -> None:
        """Remove ``OUT/.lock`` (while still holding it) and drop the lock."""
        if self._lock is not None:
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "RunFolder":
        self.claim()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
