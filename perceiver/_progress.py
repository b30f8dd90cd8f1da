"""Progress bars for long task work and downloads: on a terminal only, with tqdm when installed."""

import sys
from typing import Iterable, Optional, TypeVar

T = TypeVar("T")


def shown(requested: bool) -> bool:
    """Whether to draw a progress bar that was `requested`: only on a terminal or in a notebook.

    A bar redraws itself with carriage returns; written into a log file or a
    pipe it is noise, so there it is left out (as training does). A Jupyter
    kernel's stderr is no terminal, but its output cells draw the bar well.
    """
    if not requested:
        return False
    if "ipykernel" in sys.modules:
        return True
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def track(items: Iterable[T], total: Optional[int], desc: str, enabled: bool) -> Iterable[T]:
    """`items`, shown as a progress bar on stderr when enabled, stderr is a terminal and tqdm is installed."""
    if not shown(enabled):
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc=desc, file=sys.stderr, leave=False)
