"""DeepMind's published Perceiver IO checkpoints, and a downloader for them.

`CHECKPOINTS` names each published file and the `perceiver.models` factory
(by name, so that this module stays free of jax) whose model it fits.
`fetch` downloads a checkpoint once into a cache directory, keeps it only
if the transfer and the caller's check of its content (`verify`) pass, and
returns its path. This module knows no model and reads no checkpoint:
`perceiver.loading.fetch` passes the check that the file is the published
model's, and `perceiver.loading.pretrained` loads it.

Environment:

  PERCEIVER_CACHE: the cache directory (default ~/.cache/perceiver).
  PERCEIVER_BASE_URL: fetch files from `$PERCEIVER_BASE_URL/<filename>`
    instead of DeepMind's bucket (a mirror, or a local server in tests).
"""

import dataclasses
import http.client
import os
import pathlib
import re
import secrets
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping, Optional, Tuple, Union

from perceiver import _progress

BASE_URL = "https://storage.googleapis.com/perceiver_io"
_CHUNK = 1 << 20
# At most this many characters of what a server sent go into a message.
_MAX_QUOTED = 200
# A temporary file no download has written to for this long was left by a
# killed one (a live download writes at least once per read timeout).
_STALE_PART_SECONDS = 6 * 3600
# A body arriving slower than this (bytes per second, over any `timeout`
# seconds) is abandoned: a server that drips a byte per read timeout would
# otherwise never time out.
_MIN_RATE = 1024
# The connection, redirects and headers must all arrive within this many
# read timeouts: headers dripped a line per timeout would otherwise take hours.
_HEADER_TIMEOUTS = 3


class FetchError(RuntimeError):
    """A checkpoint could not be downloaded."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One published checkpoint and the model it fits.

    Attributes:
      name: the registry name, e.g. 'imagenet_conv'.
      url: where DeepMind publishes the file.
      filename: the file's name, in the cache as at `url`.
      factory: the name of the function in `perceiver.models` that builds the
        model.
      factory_kwargs: the keyword arguments that factory needs for this file.
      description: one line for people.
      num_parameters: how many numbers the file holds; bounds what a
        download may send (`max_bytes`).
    """

    name: str
    url: str
    filename: str
    factory: str
    # Excluded from hashing: a mapping is unhashable, and the other fields
    # already identify an entry.
    factory_kwargs: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}), hash=False
    )
    description: str = ""
    num_parameters: int = 0

    @property
    def max_bytes(self) -> int:
        """The most bytes a download of this file may have: twice its float32 size, plus slack."""
        return 2 * 4 * self.num_parameters + (64 << 20)


def _entry(name, filename, factory, description, num_parameters, **factory_kwargs) -> Checkpoint:
    return Checkpoint(
        name=name,
        url=f"{BASE_URL}/{filename}",
        filename=filename,
        factory=factory,
        # Read-only, so that no caller can change the registry by accident.
        factory_kwargs=types.MappingProxyType(factory_kwargs),
        description=description,
        num_parameters=num_parameters,
    )


CHECKPOINTS: Mapping[str, Checkpoint] = types.MappingProxyType(
    {
        entry.name: entry
        for entry in (
            _entry(
                "mlm",
                "language_perceiver_io_bytes.pickle",
                "masked_language_model",
                "Masked language model on UTF-8 bytes (C4 + Wikipedia).",
                201_108_230,
            ),
            _entry(
                "imagenet_learned",
                "imagenet_learned_position_encoding.pystate",
                "imagenet_classifier",
                "ImageNet classifier on pixels with learned position encodings.",
                62_255_848,
                variant="learned_position_encoding",
            ),
            _entry(
                "imagenet_fourier",
                "imagenet_fourier_position_encoding.pystate",
                "imagenet_classifier",
                "ImageNet classifier on pixels with Fourier position encodings.",
                48_440_627,
                variant="fourier_position_encoding",
            ),
            _entry(
                "imagenet_conv",
                "imagenet_conv_preprocessing.pystate",
                "imagenet_classifier",
                "ImageNet classifier with a convolutional stem (has BatchNorm state).",
                48_646_522,
                variant="conv_preprocessing",
            ),
            _entry(
                "flow",
                "optical_flow_checkpoint.pystate",
                "optical_flow",
                "Optical flow between two frames (AutoFlow).",
                41_057_134,
            ),
            _entry(
                "video_autoencoding",
                "video_autoencoding_checkpoint.pystate",
                "video_autoencoder",
                "Multimodal (video, audio, label) autoencoder on Kinetics-700.",
                19_858_855,
            ),
        )
    }
)


@dataclasses.dataclass(frozen=True)
class Shipped:
    """A model shipped inside the package (in perceiver/data), its description beside it.

    Attributes:
      name: the name `perceiver list` shows, e.g. 'flow_small'.
      filename: the checkpoint's file in perceiver/data.
      factory: the `perceiver.models` factory of its model (its description's).
      about: a few words for messages.
    """

    name: str
    filename: str
    factory: str
    about: str


SHIPPED: Mapping[str, Shipped] = types.MappingProxyType(
    {
        "flow_small": Shipped(
            "flow_small", "flow_small.pystate", "optical_flow",
            "32x32 tiles, trained on synthetic motion",
        ),
    }
)


def names() -> Tuple[str, ...]:
    """Every checkpoint name, as `perceiver list` shows them: the published, then the shipped."""
    return tuple(CHECKPOINTS) + tuple(SHIPPED)


def shipped_path(name: str) -> pathlib.Path:
    """The file of the model `name` shipped with the package (see `SHIPPED`).

    Raises:
      ValueError: for a name not in `SHIPPED`.
    """
    from importlib import resources

    if not isinstance(name, str) or name not in SHIPPED:
        raise ValueError(f"{name!r} is not a model shipped with the package ({', '.join(SHIPPED)}).")
    return pathlib.Path(str(resources.files("perceiver").joinpath("data", SHIPPED[name].filename)))


def _known() -> str:
    return f"{', '.join(CHECKPOINTS)} (published), {', '.join(SHIPPED)} (shipped with the package)"


def get(name: str) -> Checkpoint:
    """The registry entry called `name`.

    Raises:
      ValueError: for an unknown name, listing the known ones; for a shipped
        model's name, giving its file.
    """
    try:
        return CHECKPOINTS[name]
    except (KeyError, TypeError):
        if isinstance(name, str) and name in SHIPPED:
            raise ValueError(
                f"{name!r} is shipped with the package, not published: its file is {shipped_path(name)}."
            ) from None
        raise ValueError(f"unknown checkpoint {name!r}; known checkpoints: {_known()}.") from None


def cache_dir() -> pathlib.Path:
    """Where downloaded checkpoints are kept: $PERCEIVER_CACHE or ~/.cache/perceiver."""
    return _default_cache_dir()


def _default_cache_dir() -> pathlib.Path:
    # A separate function because `fetch` has an argument called cache_dir.
    env = os.environ.get("PERCEIVER_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "perceiver"


def _url(entry: Checkpoint) -> str:
    # Read at each call, not at import, so that a mirror can be chosen late.
    base = os.environ.get("PERCEIVER_BASE_URL")
    return f"{base.rstrip('/')}/{entry.filename}" if base else entry.url


def fetch(
    name_or_path: Union[str, "os.PathLike[str]"],
    cache_dir: Union[str, "os.PathLike[str]", None] = None,
    progress: bool = True,
    timeout: float = 60,
    force: bool = False,
    verify: Optional[Callable[[pathlib.Path], Any]] = None,
) -> pathlib.Path:
    """The local path of a checkpoint, downloading it on first use.

    A registry name is looked up in the cache and, when absent, downloaded
    into a temporary file beside it. The download is checked (status, length,
    type and encoding, then its content with `verify`) and only then renamed
    into place, so the cache never holds a bad file. A cached file is not
    read again: if one is damaged, `fetch(name, force=True)` (or
    `perceiver fetch NAME --force`) replaces it. Temporary files of this name
    left by killed downloads are removed once older than a few hours.

    Args:
      name_or_path: a name in `CHECKPOINTS`, a name in `SHIPPED` (its file is
        returned), or the path of an existing file (returned as is).
      cache_dir: where checkpoints are kept (default `cache_dir()`).
      progress: show a progress bar on stderr while downloading (only when
        stderr is a terminal).
      timeout: seconds to wait for the connection and for each read; a body
        that arrives slower than 1 KiB/s over any `timeout` seconds is
        abandoned too.
      force: download again even when the file is cached; the cached file is
        replaced only once the new one passes the checks.
      verify: called with the downloaded file's path before it is kept; it
        raises ValueError (e.g. `perceiver.checkpoint.CheckpointError`) to
        refuse it. None: only the transfer is checked (status, length, type,
        encoding); `perceiver.loading.fetch` passes
        `perceiver.loading.check_checkpoint`, the published model's trees.

    Raises:
      ValueError: if `name_or_path` is neither a known name nor a file (a
        folder, or an unknown name).
      FileNotFoundError: if it is a path (os.PathLike, or a str with a path
        separator) to nothing.
      FetchError: if the download fails, is refused, or cannot be saved;
        nothing is left under the final name (a cached file is kept), and the
        message gives the URL and the path to put the file at by hand.
    """
    if isinstance(name_or_path, str) and name_or_path in CHECKPOINTS:
        entry = CHECKPOINTS[name_or_path]
    elif isinstance(name_or_path, str) and name_or_path in SHIPPED:
        return shipped_path(name_or_path)
    else:
        path = pathlib.Path(name_or_path)
        if path.is_file():
            return path
        if path.exists():  # What else a file is, `perceiver.loading.resolve` tells before this.
            what = "a folder" if path.is_dir() else "not a regular file"
            raise ValueError(f"{path} is {what}, expected a checkpoint file")
        if not isinstance(name_or_path, str) or any(
            sep and sep in name_or_path for sep in (os.sep, os.altsep)
        ):
            raise FileNotFoundError(f"no such checkpoint file: {path}; known checkpoints: {_known()}.")
        entry = get(name_or_path)  # Not a known name: raises the ValueError listing them.

    if cache_dir is None:
        directory = _default_cache_dir()
    else:
        directory = pathlib.Path(cache_dir).expanduser()
    target = directory / entry.filename
    _remove_stale_parts(directory, entry.filename)
    if target.is_file() and not force:
        return target
    url = _url(entry)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _save_error(entry, url, target, e) from e
    _download(entry, url, target, progress, timeout, verify)
    return target


def refetch_hint(name: str) -> str:
    """How to replace the cached checkpoint `name`, for messages about a bad one."""
    return f"run `perceiver fetch {name} --force` to download it again (or delete the file)"


def bad_cache_error(name: str, path: "os.PathLike[str]", error: Exception) -> Exception:
    """`error` about the cached file of `name`, restated to say how to replace the file.

    The result is of `error`'s type (a `perceiver.checkpoint.CheckpointError`
    for a file that does not load or fit), with its attributes (e.g.
    `differences`); its message names the file and says how to replace it,
    then gives `error`'s.

    Args:
      name: the registry name.
      path: the cached file.
      error: why the file failed to load; its type must take a message alone.
    """
    # Downloads are checked, so a bad cached file was damaged later or is
    # older than the checks.
    new = type(error)(
        f"the cached checkpoint {name!r} at {path} cannot be used: {refetch_hint(name)}.\n{error}"
    )
    new.__dict__.update(error.__dict__)
    return new


def _clip(text: Any, limit: int = _MAX_QUOTED) -> str:
    """`text` on one line and at most `limit` characters: servers can send anything."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fetch_error(entry: Checkpoint, url: str, target: pathlib.Path, reason: Any) -> FetchError:
    return FetchError(
        f"could not download checkpoint {entry.name!r} from {url}: {reason}\n"
        f"You can download it by hand and save it as {target}"
    )


def _save_error(entry: Checkpoint, url: str, target: pathlib.Path, error: OSError) -> FetchError:
    return FetchError(
        f"could not save checkpoint {entry.name!r} from {url} as {target}: {_clip(error)}\n"
        "Choose a writable cache (PERCEIVER_CACHE, cache_dir or --cache-dir), "
        f"or download it by hand and save it as {target}"
    )


def _remove_stale_parts(directory: pathlib.Path, filename: str) -> None:
    """Removes `filename`'s temporary files that no download has written to for hours."""
    # A live download writes at least once per read timeout, so its file is
    # always fresh; an old one was left by a killed process.
    pattern = re.compile(re.escape(filename) + r"\.[0-9a-f]{12}\.part")
    cutoff = time.time() - _STALE_PART_SECONDS
    try:
        candidates = [p for p in directory.iterdir() if pattern.fullmatch(p.name)]
    except OSError:  # No cache yet, or unreadable: nothing to clean.
        return
    for part in candidates:
        try:
            if part.stat().st_mtime < cutoff:
                part.unlink()
        except OSError:  # Gone already (another cleaner), or read-only: harmless.
            pass


def _download(
    entry: Checkpoint,
    url: str,
    target: pathlib.Path,
    progress: bool,
    timeout: float,
    verify: Optional[Callable[[pathlib.Path], Any]],
) -> None:
    """Downloads `url` to `target` through a checked temporary file; never leaves a bad file."""
    # A unique name, so that concurrent downloads of one file cannot clash;
    # open(..., "xb") gives it the usual permissions rather than mkstemp's 0600.
    tmp = target.with_name(f"{target.name}.{secrets.token_hex(6)}.part")
    # identity: a compressed body would be saved compressed, and fail to load.
    headers = {"User-Agent": "perceiver-io", "Accept-Encoding": "identity"}
    request = urllib.request.Request(url, headers=headers)
    try:
        try:
            response = _open(request, timeout)
        except (OSError, http.client.HTTPException, ValueError) as e:
            # OSError covers URLError, HTTPError (404 ...), refused connections
            # and timeouts; ValueError a malformed PERCEIVER_BASE_URL.
            raise _fetch_error(entry, url, target, _clip(e)) from e
        with response:
            total = _check_headers(entry, url, target, response)
            _copy(entry, url, target, response, tmp, total, progress, timeout)
        if verify is not None:
            try:
                verify(tmp)
            except ValueError as e:  # perceiver.checkpoint.CheckpointError is one.
                what = _sniff(tmp) or "a file that is not this checkpoint"
                # The temporary name means nothing to the reader: it is about to go.
                why = str(e).replace(str(tmp), "the file")
                reason = f"the server sent {what} ({_clip(why)})"
                raise _fetch_error(entry, url, target, reason) from e
        os.replace(tmp, target)
    except OSError as e:  # Only the local file is left to fail here: network errors are wrapped.
        _remove(tmp)
        raise _save_error(entry, url, target, e) from e
    except BaseException:  # A FetchError, or Ctrl-C: clean up, then let it through.
        _remove(tmp)
        raise


def _open(request: urllib.request.Request, timeout: float):
    """`urlopen(request)`, within `_HEADER_TIMEOUTS * timeout` seconds in all; else TimeoutError."""
    outcome = {}
    done = threading.Event()
    abandoned = threading.Event()

    def work():
        try:
            outcome["response"] = urllib.request.urlopen(request, timeout=timeout)
        except BaseException as e:  # Handed to the caller's thread.
            outcome["error"] = e
        done.set()
        if abandoned.is_set() and "response" in outcome:  # Too late: nobody will read it.
            outcome["response"].close()

    # A daemon thread: an abandoned one ends at its next read timeout at the latest.
    threading.Thread(target=work, daemon=True, name="perceiver-hub-open").start()
    deadline = _HEADER_TIMEOUTS * timeout
    answered = False
    try:
        answered = done.wait(deadline)
    finally:  # After a timeout or Ctrl-C, an answer that still comes is closed unread.
        if not answered:
            abandoned.set()
            if done.is_set() and "response" in outcome:  # Finished between the two lines.
                outcome["response"].close()
    if not answered:
        raise TimeoutError(f"no complete answer (status and headers) within {deadline:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["response"]


def _check_headers(entry: Checkpoint, url: str, target: pathlib.Path, response) -> Optional[int]:
    """The announced length of a response that may be a checkpoint; else raises FetchError."""
    final_url = response.geturl()
    where = f" (redirected to {_clip(final_url, 100)})" if final_url and final_url != url else ""

    def refuse(reason):
        return _fetch_error(entry, url, target, reason + where)

    status = getattr(response, "status", None)
    if status is not None and status != 200:
        raise refuse(f"the server answered {status} {_clip(response.reason, 60)}, not 200 OK")
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise refuse(
            f"the server sent the file encoded as {_clip(encoding, 60)!r} although asked "
            "for identity (a proxy rewriting downloads?)"
        )
    content_type = response.headers.get("Content-Type", "")
    kind = content_type.split(";")[0].strip().lower()
    main_type, _, subtype = kind.partition("/")
    if "html" in subtype:
        raise refuse(
            f"the server sent an HTML page ({_clip(kind, 60)}), not a checkpoint: "
            "a captive portal or a login page?"
        )
    if main_type == "text" or subtype in ("json", "xml"):
        raise refuse(f"the server sent text ({_clip(kind, 60)}), not a checkpoint")
    length = response.headers.get("Content-Length", "").strip()
    # Unknown or malformed: None, and the content check decides.
    total = int(length) if length.isdigit() else None
    if total is not None and total > entry.max_bytes:
        raise refuse(
            f"the server announces {total} bytes, more than this checkpoint can be "
            f"({entry.max_bytes} bytes at most)"
        )
    return total


def _copy(
    entry, url, target, response, tmp: pathlib.Path, total: Optional[int], progress: bool,
    timeout: float,
):
    """Writes the body to `tmp`; raises FetchError on a network failure, a drip or a short body."""
    received = 0
    # read1 returns after one read from the socket, so that a slow drip is seen
    # (read(n) would wait for all n bytes, one read timeout at a time).
    read = getattr(response, "read1", response.read)
    window_start, window_bytes = time.monotonic(), 0
    with open(tmp, "xb") as f:
        bar = _progress_bar(total, entry.filename, progress)
        try:
            while True:
                try:
                    chunk = read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    # Wrapped here, so that an OSError that escapes is about the local file.
                    reason = f"the transfer failed after {received} bytes: {_clip(e)}"
                    raise _fetch_error(entry, url, target, reason) from e
                if not chunk:
                    break
                received += len(chunk)
                window_bytes += len(chunk)
                elapsed = time.monotonic() - window_start
                if elapsed >= timeout:
                    if window_bytes < _MIN_RATE * elapsed:
                        raise _fetch_error(
                            entry, url, target,
                            f"the transfer slowed to {window_bytes} bytes in {elapsed:.1f} s "
                            f"after {received} bytes, less than {_MIN_RATE} bytes/s "
                            "(a stalled or throttled server?)",
                        )
                    window_start, window_bytes = time.monotonic(), 0
                if received > entry.max_bytes:  # A body without end must not fill the disk.
                    raise _fetch_error(
                        entry, url, target,
                        f"the server sent more than {entry.max_bytes} bytes, more than this "
                        "checkpoint can be",
                    )
                f.write(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
        f.flush()
        os.fsync(f.fileno())
    # http.client returns short data rather than raising when the server
    # closes early, so the length must be checked here.
    if total is not None and received != total:
        raise _fetch_error(
            entry, url, target, f"the transfer stopped after {received} of {total} bytes"
        )


def _sniff(path: pathlib.Path) -> Optional[str]:
    """What a refused file looks like, when its first bytes say so."""
    try:
        with open(path, "rb") as f:
            head = f.read(256).lstrip().lower()
    except OSError:
        return None
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a captive portal or a login page?)"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data"
    if head.startswith(b"<"):
        return "an XML or HTML document"
    return None


def _remove(path: pathlib.Path) -> None:
    # Never raises: it runs while another error is on its way to the user
    # (unlink fails with EROFS even for a missing file on a read-only disk).
    try:
        path.unlink()
    except OSError:
        pass


class _TextProgress:
    """A one-line percentage on stderr, for when tqdm is not installed."""

    def __init__(self, total: Optional[int], desc: str):
        self.total, self.desc, self.n, self.shown = total, desc, 0, None

    def update(self, n: int) -> None:
        self.n += n
        if self.total:
            text = f"{100 * self.n // self.total}% ({self.n / 1e6:.1f}/{self.total / 1e6:.1f} MB)"
        else:
            text = f"{self.n / 1e6:.1f} MB"
        if text != self.shown:  # Redraw only on change: stderr may be a slow terminal.
            self.shown = text
            sys.stderr.write(f"\rDownloading {self.desc}: {text}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.shown is not None:
            sys.stderr.write("\n")
            sys.stderr.flush()


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: Optional[int], desc: str, enabled: bool):
    # As everywhere else: a bar redrawn with carriage returns is noise in a log.
    if not _progress.shown(enabled):
        return _NoProgress()
    try:
        from tqdm import tqdm  # Optional: nicer when present.
    except ImportError:
        return _TextProgress(total, desc)
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr
    )
