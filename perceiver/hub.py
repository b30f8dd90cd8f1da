"""DeepMind's published Perceiver IO checkpoints, and a downloader for them.

`CHECKPOINTS` names each published file and the `perceiver.models` factory
(by name, so that this module stays free of jax) whose model it fits.
`fetch` downloads a checkpoint once into a cache directory and returns its
path; read it with `perceiver.checkpoint.load`.

Environment:
  PERCEIVER_CACHE: the cache directory (default ~/.cache/perceiver).
  PERCEIVER_BASE_URL: fetch files from `$PERCEIVER_BASE_URL/<filename>`
    instead of DeepMind's bucket (a mirror, or a local server in tests).
"""

import dataclasses
import http.client
import os
import pathlib
import secrets
import sys
import types
import urllib.error
import urllib.request
from typing import Any, Mapping, Optional, Union

BASE_URL = "https://storage.googleapis.com/perceiver_io"
_CHUNK = 1 << 20


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


def _entry(name, filename, factory, description, **factory_kwargs) -> Checkpoint:
    return Checkpoint(
        name=name,
        url=f"{BASE_URL}/{filename}",
        filename=filename,
        factory=factory,
        # Read-only, so that no caller can change the registry by accident.
        factory_kwargs=types.MappingProxyType(factory_kwargs),
        description=description,
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
            ),
            _entry(
                "imagenet_learned",
                "imagenet_learned_position_encoding.pystate",
                "imagenet_classifier",
                "ImageNet classifier on pixels with learned position encodings.",
                variant="learned_position_encoding",
            ),
            _entry(
                "imagenet_fourier",
                "imagenet_fourier_position_encoding.pystate",
                "imagenet_classifier",
                "ImageNet classifier on pixels with Fourier position encodings.",
                variant="fourier_position_encoding",
            ),
            _entry(
                "imagenet_conv",
                "imagenet_conv_preprocessing.pystate",
                "imagenet_classifier",
                "ImageNet classifier with a convolutional stem (has BatchNorm state).",
                variant="conv_preprocessing",
            ),
            _entry(
                "flow",
                "optical_flow_checkpoint.pystate",
                "optical_flow",
                "Optical flow between two frames (AutoFlow).",
            ),
            _entry(
                "video_autoencoding",
                "video_autoencoding_checkpoint.pystate",
                "video_autoencoder",
                "Multimodal (video, audio, label) autoencoder on Kinetics-700.",
            ),
        )
    }
)


def get(name: str) -> Checkpoint:
    """The registry entry called `name`.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    try:
        return CHECKPOINTS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown checkpoint {name!r}; known checkpoints: {', '.join(CHECKPOINTS)}."
        ) from None


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
) -> pathlib.Path:
    """The local path of a checkpoint, downloading it on first use.

    A registry name is looked up in the cache and, when absent, downloaded
    into a temporary file beside it that is renamed into place once complete.

    Args:
      name_or_path: a name in `CHECKPOINTS`, or the path of an existing file
        (returned as is).
      cache_dir: where checkpoints are kept (default `cache_dir()`).
      progress: show a progress bar on stderr while downloading.
      timeout: seconds to wait for the connection and for each read.

    Raises:
      ValueError: if `name_or_path` is neither a known name nor a file.
      FileNotFoundError: if it is a path (os.PathLike, or a str with a path
        separator) to no file.
      FetchError: if the download fails; nothing is left under the final
        name, and the message gives the URL and the path to put the file at
        by hand.
    """
    if isinstance(name_or_path, str) and name_or_path in CHECKPOINTS:
        entry = CHECKPOINTS[name_or_path]
    else:
        path = pathlib.Path(name_or_path)
        if path.is_file():
            return path
        if not isinstance(name_or_path, str) or any(
            sep and sep in name_or_path for sep in (os.sep, os.altsep)
        ):
            raise FileNotFoundError(
                f"no checkpoint file at {path}; known checkpoint names: {', '.join(CHECKPOINTS)}."
            )
        entry = get(name_or_path)  # Not a known name: raises the ValueError listing them.

    if cache_dir is None:
        directory = _default_cache_dir()
    else:
        directory = pathlib.Path(cache_dir).expanduser()
    target = directory / entry.filename
    if target.is_file():
        return target
    url = _url(entry)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fetch_error(entry, url, target, e) from e
    _download(entry, url, target, progress, timeout)
    return target


def _fetch_error(entry: Checkpoint, url: str, target: pathlib.Path, reason: Any) -> FetchError:
    return FetchError(
        f"could not download checkpoint {entry.name!r} from {url}: {reason}\n"
        f"You can download it by hand and save it as {target}"
    )


def _download(entry: Checkpoint, url: str, target: pathlib.Path, progress: bool, timeout: float):
    """Downloads `url` to `target` through a temporary file; never leaves a partial file."""
    # A unique name, so that concurrent downloads of one file cannot clash;
    # open(..., "xb") gives it the usual permissions rather than mkstemp's 0600.
    tmp = target.with_name(f"{target.name}.{secrets.token_hex(6)}.part")
    request = urllib.request.Request(url, headers={"User-Agent": "perceiver-io"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "xb") as f:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = _progress_bar(total, entry.filename, progress)
            received = 0
            try:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
            # http.client returns short data rather than raising when the
            # server closes early, so the length must be checked here.
            if total is not None and received != total:
                raise _fetch_error(
                    entry, url, target, f"the transfer stopped after {received} of {total} bytes"
                )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except FetchError:
        _remove(tmp)
        raise
    except (OSError, http.client.HTTPException, ValueError) as e:
        # OSError covers URLError, HTTPError (404 ...), refused connections
        # and timeouts; ValueError a malformed PERCEIVER_BASE_URL.
        _remove(tmp)
        raise _fetch_error(entry, url, target, e) from e
    except BaseException:  # e.g. KeyboardInterrupt: clean up, then let it through.
        _remove(tmp)
        raise


def _remove(path: pathlib.Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
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
    if not enabled:
        return _NoProgress()
    try:
        from tqdm import tqdm  # Optional: nicer when present.
    except ImportError:
        return _TextProgress(total, desc)
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr
    )
