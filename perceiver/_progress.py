"""Progress bars for long task work: tqdm when installed, otherwise none."""

import sys
from typing import Iterable, Optional, TypeVar

T = TypeVar("T")


def track(items: Iterable[T], total: Optional[int], desc: str, enabled: bool) -> Iterable[T]:
    """`items`, shown as a progress bar on stderr when enabled and tqdm is installed."""
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc=desc, file=sys.stderr, leave=False)
