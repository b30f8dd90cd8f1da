"""The run folder: checked before use, and locked so that one trainer at a time writes it.

Training holds an exclusive `fcntl.flock` on `WORKDIR/.lock` for the whole
run and writes its PID there; `--export` and `--eval-only` hold a shared
one, since they only read checkpoints: several of them may run together,
but neither while a trainer runs (its checkpoint manager deletes old steps
and unfinished saves that a reader might be restoring), nor a trainer while
they run. The kernel drops the lock when its process ends, however it ends,
so a killed run leaves no stale lock; the file itself stays, except when a
failed first start removes what it made (`main`): it does so while holding
the lock, and a process that locked the removed file notices (the path no
longer names it) and locks the file now at the path instead.

With several processes (`jax.distributed`), only process 0 takes the
exclusive lock: they all write the same folder on purpose.
"""

import contextlib
import errno
import fcntl
import os
import shutil
from typing import Optional

LOCK_NAME = ".lock"


class WorkdirError(ValueError):
    """A --workdir that cannot be used: a file, not creatable, or in use."""


def prepare(workdir: str, create: bool = True) -> str:
    """The absolute path of `workdir`, created if asked and missing.

    Raises:
      WorkdirError: if it names something other than a folder, or cannot be created.
    """
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"--workdir must be a folder; got {path}, which is a file.")
    if create:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:  # a parent is a file, no permission, read-only file system
            raise WorkdirError(f"--workdir {path} cannot be created: {e.strerror or e}.") from None
    return path


class WorkdirLock:
    """An flock on `WORKDIR/.lock`, held from `acquire` until `release` or the process's end.

    Args:
      workdir: an existing folder.
      shared: a reader's lock (export, evaluation) instead of a trainer's.
      what: what the holder does, written beside its PID for the message
        another process gets.
    """

    def __init__(self, workdir: str, shared: bool = False, what: str = "train"):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.shared = shared
        self.what = what
        self._fd: Optional[int] = None

    def acquire(self) -> "WorkdirLock":
        """Takes the lock without waiting.

        Raises:
          WorkdirError: if another process holds it (naming that process's PID).
        """
        for _ in range(_TRIES):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except OSError as e:
                holder = _holder(fd)
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise
                workdir = os.path.dirname(self.path)
                raise WorkdirError(
                    f"{workdir} is in use by another perceiver train ({holder}); wait for it to "
                    "end, or give another --workdir."
                ) from None
            if _names(self.path, fd):
                break
            os.close(fd)  # a failed start removed this file while we opened it: again
        else:
            raise WorkdirError(f"cannot lock {self.path}: it is removed and made again repeatedly.")
        # Readers overwrite each other's line: the message names one holder, not all.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.what}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_TRIES = 5


def _names(path: str, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    """'PID 1234, train' from the lock file, or what is known."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        text = []
    if text and text[0].isdigit():
        return f"PID {text[0]}" + (f", {' '.join(text[1:])}" if len(text) > 1 else "")
    return "PID unknown"


class StartRecord:
    """What a workdir held before a start, so that a failed start can take away what it added.

    Args:
      workdir: the folder's absolute path, before `prepare` may create it.
    """

    def __init__(self, workdir: str):
        self.path = workdir
        self.made = not os.path.lexists(workdir)  # this start makes the folder
        self.before = set(os.listdir(workdir)) if os.path.isdir(workdir) else set()

    def undo(self, locked: bool) -> bool:
        """Removes what this start added, unless the workdir now holds a checkpoint.

        Args:
          locked: whether this process holds the workdir's lock. Without it
            another process may be using the folder: only an empty folder
            this start made is removed.

        Returns:
          whether the workdir is gone (when this start made it), or back as it was.
        """
        if not os.path.isdir(self.path):
            return self.made
        checkpoints = os.path.join(self.path, "checkpoints")
        if os.path.isdir(checkpoints) and any(d.isdigit() for d in os.listdir(checkpoints)):
            return False  # a run to resume
        if locked:
            for name in os.listdir(self.path):
                if name in self.before:
                    continue
                entry = os.path.join(self.path, name)
                if os.path.isdir(entry) and not os.path.islink(entry):
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry)
        if self.made:
            with contextlib.suppress(OSError):  # not empty: another process's files
                os.rmdir(self.path)
        if not os.path.isdir(self.path):
            return True
        return set(os.listdir(self.path)) == self.before
