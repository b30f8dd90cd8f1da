"""Files written whole or not at all: a temporary file renamed over the target."""

import os
import secrets
from typing import Any, Callable


def write_atomically(path: str, write: Callable[[Any], Any]) -> None:
    """Calls `write(f)` on a temporary file beside `path`, then renames it over `path`.

    Raises:
      OSError: if the file cannot be written; `path` is then left as it was
        and the temporary file removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # open(..., "xb") rather than mkstemp: the file gets the usual permissions
    # (umask), not mkstemp's owner-only 0600, and a name clash fails loudly.
    tmp = os.path.join(directory, f"{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
