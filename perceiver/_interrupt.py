"""Ctrl-C in the `perceiver` program: a clean stop at any moment.

Python's own SIGINT handler raises KeyboardInterrupt wherever the main
thread happens to be. Four places make that unsafe, and the handler that
`install` sets avoids them:

- a garbage-collector callback (jax registers one), a `__del__` or a weakref
  callback: Python prints the exception there as "Exception ignored ...
  Traceback" and carries on, so the interrupt is lost; it is delivered again
  a moment later instead (`sys.unraisablehook` catches the cases the handler
  cannot see);
- an import: KeyboardInterrupt unwinding through a C extension's
  initialisation (jaxlib's) crashes the process; it waits for the import's end;
- a `held()` block (a train step whose donated state must be reassigned, a
  set of renames that must all happen): the interrupt waits for its end;
- a second Ctrl-C while the first is being handled (saving a checkpoint,
  removing temporary files): ignored.

`finish` ends the program. After an interrupt it exits without the
interpreter's teardown (flushing stdout and stderr first): XLA's and orbax's
background threads may still be running then, and tearing the interpreter
down under them ended runs with a segmentation fault after their last line.
"""

import contextlib
import gc
import os
import signal
import sys
import threading
import warnings
from typing import Iterator, Optional

# How long a deferred interrupt waits before it is delivered again, seconds.
_RETRY_S = 0.05

_early_line: Optional[str] = None  # set by `early`: the program has not started its work
_depth = 0  # nested held() blocks
_pending = False  # an interrupt arrived inside a held() block
_stopping = False  # the program is already handling an interrupt
_installed = False


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _unsafe(frame) -> bool:
    """Whether an exception raised in `frame` would be dropped, or could crash the process.

    Dropped: inside a gc callback or a `__del__`. Crash: inside an import,
    which may be a C extension's initialisation (jaxlib's segfaults when
    KeyboardInterrupt unwinds through it).
    """
    callbacks = set()
    for callback in gc.callbacks:
        function = getattr(callback, "__func__", callback)
        code = getattr(function, "__code__", None)
        if code is not None:
            callbacks.add(code)
    while frame is not None:
        code = frame.f_code
        if code in callbacks or code.co_name == "__del__" or code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _redeliver() -> None:
    timer = threading.Timer(_RETRY_S, os.kill, (os.getpid(), signal.SIGINT))
    timer.daemon = True
    timer.start()


def _handler(signum, frame) -> None:
    global _pending, _stopping
    if _early_line is not None:  # still importing: nothing to clean up, no traceback to show
        _exit_now(130, _early_line)
    if _stopping:
        return
    if _depth:
        _pending = True
        return
    if _unsafe(frame):
        _redeliver()
        return
    _stopping = True
    # What the interrupted code leaves half-built (an asyncio loop of orbax's,
    # coroutines never awaited) complains as it is collected: not the user's news.
    warnings.simplefilter("ignore")
    raise KeyboardInterrupt


def _unraisable(info) -> None:
    """Python's hook for exceptions it cannot raise (weakref callbacks...).

    A Ctrl-C dropped there is delivered again; while stopping, the errors of
    half-built objects being collected are not shown.
    """
    global _stopping
    if isinstance(info.exc_value, KeyboardInterrupt):
        _stopping = False
        _redeliver()
        return
    if _stopping:
        return
    _previous_unraisable(info)


_previous_unraisable = sys.unraisablehook


def install() -> None:
    """Sets the SIGINT handler described above (for the program; from the main thread)."""
    global _installed, _early_line, _previous_unraisable
    if _main_thread():
        _early_line = None
        signal.signal(signal.SIGINT, _handler)
        if sys.unraisablehook is not _unraisable:
            _previous_unraisable = sys.unraisablehook
            sys.unraisablehook = _unraisable
        _installed = True


def early(line: str) -> None:
    """While the program imports its modules, Ctrl-C prints `line` and exits with status 130.

    Python's own handler would print a traceback of the import under way.
    `install` ends this.
    """
    global _early_line
    if _main_thread():
        _early_line = line
        signal.signal(signal.SIGINT, _handler)


def is_program(module_name: str) -> bool:
    """Whether a module named `module_name` runs as the `perceiver` program, not imported by one."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return module_name == "__main__" or name in ("perceiver", "perceiver.exe")


def _exit_now(status: int, line: Optional[str] = None) -> None:
    if line:
        try:
            sys.stderr.write(line + "\n")
        except (OSError, ValueError):
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Delays a Ctrl-C that arrives inside the block to the block's end.

    Works with any SIGINT handler: the one `install` sets, or Python's own
    (replaced for the block, then called at its end if Ctrl-C was pressed).
    Outside the main thread, where no signal arrives, it does nothing.
    """
    global _depth, _pending
    if not _main_thread():
        yield
        return
    previous: Optional[object] = None
    current = signal.getsignal(signal.SIGINT)
    if _depth == 0 and current is not _handler and callable(current):
        previous = signal.signal(signal.SIGINT, _defer)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if _depth == 0 and _pending:
        _pending = False
        if previous is not None:
            previous(signal.SIGINT, None)  # Python's handler raises KeyboardInterrupt
        else:
            _handler(signal.SIGINT, None)


def _defer(signum, frame) -> None:
    global _pending
    _pending = True


def finish(status: int) -> int:
    """Ends the program's work: returns `status`, or exits at once after an interrupt.

    Ctrl-C from here on is ignored: the answer is printed and the files are written.
    """
    if _main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if status == 130:
        _exit_now(130)
    return status
