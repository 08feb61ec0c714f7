"""An exclusive lock on a file, held while a block runs: a run folder held by its stage, an env's datasets while
they are written."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


@contextlib.contextmanager
def exclusive(path: Path, busy: Exception | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` of ``path`` (made if missing) while the block runs. While another process holds
    it, wait for it to let go, or, given ``busy``, raise that instead. The operating system drops the lock when the
    process ends however it ends, so a killed holder leaves no stale lock, at most the empty file, which the next one
    takes; the file is removed on release. Where it cannot be locked (not POSIX, a filesystem without locks, a
    read-only folder, which the caller then meets and names) the block runs unlocked."""
    handle = _acquire(Path(path), busy)
    try:
        yield
    finally:
        if handle is not None:
            with contextlib.suppress(OSError):
                Path(path).unlink()  # before letting go, so that the next holder locks a new file, not this one
            handle.close()


def _acquire(path: Path, busy: Exception | None) -> IO[str] | None:
    """``path`` opened and locked (closing it lets go), or None where it cannot be locked."""
    try:
        import fcntl
    except ImportError:
        return None
    while True:
        try:
            handle = open(path, "a")  # noqa: SIM115 (kept open while held)
        except OSError as err:
            log.debug("%s cannot be written (%s); running unlocked", path, err)
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if busy is None else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise busy from None
        except OSError as err:
            handle.close()
            log.debug("%s cannot be locked on this filesystem (%s); running unlocked", path, err)
            return None
        with contextlib.suppress(FileNotFoundError):  # its last holder may have removed it after it was opened
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        handle.close()
