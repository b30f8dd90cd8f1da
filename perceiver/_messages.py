"""Words for messages: what a file a person gave is, and how to install an extra.

`file_kind(path)` tells, from a file's first bytes (never by running or
fully parsing it), what it is: a folder, an empty file, a checkpoint
description, a PNG image, a pickle... so that a loader can say "X is a text
file, expected a checkpoint file" instead of the error of a parser that was
given the wrong thing. `wrong_kind` words that message. `install_hint` is the
one spelling of the command that installs an optional extra.

Standard library only: the checkpoint reader and the media readers use it.
"""

import dataclasses
import json
import os
import zipfile
from typing import Optional

# The optional extras setup.py defines (EXTRAS), for `install_hint`.
EXTRAS = ("media", "notebook", "train", "hf", "export", "datasets", "all", "test", "docs")
DISTRIBUTION = "perceiver-io-jax"

# What each reader expects, as messages name it.
CHECKPOINT = "a checkpoint file (a .pystate pickle or a .safetensors file)"
IMAGE = "an image (PNG, JPEG, GIF, BMP, TIFF, WebP...)"
VIDEO = "a video (MP4, MOV, MKV, WebM, AVI, GIF...)"
WAV = "a WAV audio file"

_HEAD_BYTES = 4096
# JSON files up to this size are parsed to tell a description from other JSON.
_MAX_JSON_BYTES = 8 << 20
# The first bytes of the legacy (non-zip) torch.save format: its pickled magic number.
_TORCH_LEGACY = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
# The files that make a folder one of transformers' save_pretrained folders.
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
               "pytorch_model.bin.index.json")


def install_hint(extra: str) -> str:
    """The command that installs the optional `extra` (as setup.py names it).

    Works where the package is installed, from a checkout (`pip install -e .`)
    or from its repository: pip adds the extra's packages to it.

    Raises:
      ValueError: for a name setup.py does not define.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; setup.py defines {', '.join(EXTRAS)}.")
    return f"pip install '{DISTRIBUTION}[{extra}]'"


@dataclasses.dataclass(frozen=True)
class Kind:
    """What a file is.

    Attributes:
      name: one of 'missing', 'folder', 'hf_folder', 'special', 'unreadable',
        'empty', 'image', 'gif', 'video', 'audio', 'wav', 'pickle', 'torch',
        'safetensors', 'npy', 'npz', 'zip', 'gzip', 'hdf5', 'pdf', 'html',
        'description', 'hf_config', 'json', 'text', 'binary' (none of these).
      phrase: how a message names it ("a PNG image", "a folder"...).
    """

    name: str
    phrase: str


def _magic(head: bytes, size: int) -> Optional[Kind]:
    """The kind that `head` (a file's first bytes) shows by a format's signature."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Kind("image", "a PNG image")
    if head.startswith(b"\xff\xd8\xff"):
        return Kind("image", "a JPEG image")
    if head.startswith((b"GIF87a", b"GIF89a")):
        return Kind("gif", "a GIF image")
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return Kind("image", "a TIFF image")
    # A BMP's header holds its own size: two letters alone are too weak a sign.
    if head.startswith(b"BM") and len(head) >= 26 and int.from_bytes(head[2:6], "little") == size:
        return Kind("image", "a BMP image")
    if head.startswith(b"RIFF") and len(head) >= 12:
        form = head[8:12]
        if form == b"WEBP":
            return Kind("image", "a WebP image")
        if form == b"WAVE":
            return Kind("wav", "a WAV audio file")
        if form == b"AVI ":
            return Kind("video", "an AVI video")
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"avif"):
            return Kind("image", "a HEIF/AVIF image")
        if brand in (b"M4A ", b"M4B "):
            return Kind("audio", "an M4A audio file")
        if brand == b"qt  ":
            return Kind("video", "a QuickTime video")
        return Kind("video", "an MP4 video")
    if head.startswith(b"\x1aE\xdf\xa3"):
        return Kind("video", "a Matroska/WebM video")
    if head.startswith(b"ID3") or head.startswith(b"\xff\xfb"):
        return Kind("audio", "an MP3 audio file")
    if head.startswith(b"fLaC"):
        return Kind("audio", "a FLAC audio file")
    if head.startswith(b"OggS"):
        return Kind("video", "an Ogg audio or video file")  # Theora video is Ogg too.
    if head.startswith(b"\x93NUMPY"):
        return Kind("npy", "a numpy .npy array")
    if head.startswith(b"\x1f\x8b"):
        return Kind("gzip", "a gzip-compressed file")
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return Kind("hdf5", "an HDF5 file (Keras or TensorFlow weights?)")
    if head.startswith(b"%PDF"):
        return Kind("pdf", "a PDF document")
    # Before pickles: a header length's low byte may be 0x80.
    if head[8:10] in (b'{"', b"{}") and 8 + int.from_bytes(head[:8], "little") <= size:
        return Kind("safetensors", "a safetensors file")
    if head.startswith(_TORCH_LEGACY):
        return Kind("torch", "a PyTorch file (torch.save, legacy format)")
    if head.startswith(b"\x80"):
        return Kind("pickle", "a Python pickle (a checkpoint?)")
    return None


def _is_text(head: bytes) -> bool:
    """Whether `head` reads as UTF-8 text (a multi-byte character cut at its end allowed)."""
    if b"\x00" in head:
        return False
    for cut in range(4):
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return False
    controls = sum(1 for c in text if ord(c) < 32 and c not in "\t\n\r\f\v")
    return controls <= len(text) // 100


def _json_kind(path: Optional[str], size: int) -> Kind:
    """A description, transformers' config.json or other JSON: what the parsed file holds."""
    if path is None or size > _MAX_JSON_BYTES:
        return Kind("json", "a JSON file")
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read(_MAX_JSON_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deep
        return Kind("text", "a text file")
    if isinstance(value, dict):
        if str(value.get("format", "")).startswith("perceiver-checkpoint") or "factory" in value:
            return Kind("description", "a checkpoint description (the JSON beside a checkpoint)")
        if "model_type" in value or "architectures" in value:
            return Kind("hf_config", "a Hugging Face transformers config.json")
    return Kind("json", "a JSON file")


def bytes_kind(head: bytes, size: int, path: Optional[str] = None) -> Kind:
    """What a file whose first bytes are `head` and length `size` is.

    Args:
      head: its first bytes (a few KiB are enough).
      size: its length in bytes.
      path: its path, to look into a zip archive or parse JSON; None for
        bytes alone.
    """
    if size == 0:
        return Kind("empty", "an empty file (0 bytes)")
    found = _magic(head, size)
    if found is not None:
        return found
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(path)
    if _is_text(head):
        stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
        if stripped.startswith((b"<!doctype html", b"<html")):
            return Kind("html", "an HTML page")
        if stripped.startswith((b"{", b"[")):
            return _json_kind(path, size)
        return Kind("text", "a text file")
    return Kind("binary", "a file of unknown format")


def _zip_kind(path: Optional[str]) -> Kind:
    if path is None:
        return Kind("zip", "a zip archive")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return Kind("zip", "a zip archive")
    if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return Kind("torch", "a PyTorch file (torch.save)")
    if names and all(name.endswith(".npy") for name in names):
        return Kind("npz", "a numpy .npz archive")
    return Kind("zip", "a zip archive")


def is_hf_folder(path: "os.PathLike[str] | str") -> bool:
    """Whether `path` is a folder that transformers' save_pretrained wrote (config and weights)."""
    path = os.fspath(path)
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.isfile(os.path.join(path, name)) for name in _HF_WEIGHTS
    )


def file_kind(path: "os.PathLike[str] | str") -> Kind:
    """What the file (or folder) at `path` is, from its first bytes."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return Kind("missing", "a path to nothing")
    if os.path.isdir(path):
        if is_hf_folder(path):
            return Kind("hf_folder", "a Hugging Face transformers folder")
        return Kind("folder", "a folder")
    if not os.path.isfile(path):
        return Kind("special", "not a regular file")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError as e:
        return Kind("unreadable", f"an unreadable file ({e.strerror or e})")
    return bytes_kind(head, size, path)


def wrong_kind(path: "os.PathLike[str] | str", kind: Kind, expected: str, hint: str = "") -> str:
    """'PATH is KIND, expected EXPECTED[; HINT]': the one line for a file of the wrong kind."""
    return f"{os.fspath(path)} is {kind.phrase}, expected {expected}" + (f"; {hint}" if hint else "")
