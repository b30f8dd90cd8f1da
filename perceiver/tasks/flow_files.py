"""The Middlebury `.flo` file format of optical flow: `read_flo` and `write_flo`."""

import os
import pathlib
from typing import Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

FLO_MAGIC = 202021.25  # Middlebury's check value; its float32 bytes read "PIEH".
_FLO_HEADER = np.dtype([("magic", "<f4"), ("width", "<i4"), ("height", "<i4")])
# A sanity bound on .flo sizes, so that a corrupt header fails cleanly.
_FLO_MAX_SIDE = 1 << 16


def write_flo(path: PathLike, flow) -> None:
    """Writes a flow field as a Middlebury `.flo` file.

    The format: the float32 202021.25, int32 width, int32 height, then
    float32 (dx, dy) pairs row by row, all little-endian.

    Args:
      path: the output file.
      flow: `[H, W, 2]`.

    Raises:
      ValueError: for a shape other than `[H, W, 2]`.
    """
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[-1] != 2 or min(flow.shape[:2]) < 1:
        raise ValueError(f"flow must be [H, W, 2] with H, W >= 1; got shape {flow.shape}.")
    header = np.array([(FLO_MAGIC, flow.shape[1], flow.shape[0])], _FLO_HEADER)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.ascontiguousarray(flow, dtype="<f4").tobytes())


def read_flo(path: PathLike) -> np.ndarray:
    """Reads a Middlebury `.flo` file.

    Returns:
      float32 `[H, W, 2]`.

    Raises:
      FileNotFoundError: if there is no file at `path`.
      ValueError: if the file is not a well-formed `.flo` file (wrong magic
        number, bad sizes, or too little or too much data).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    data = path.read_bytes()
    if len(data) < _FLO_HEADER.itemsize:
        raise ValueError(
            f"{path} is not a .flo file: {len(data)} bytes, fewer than its "
            f"{_FLO_HEADER.itemsize}-byte header."
        )
    header = np.frombuffer(data[: _FLO_HEADER.itemsize], _FLO_HEADER)[0]
    if header["magic"] != np.float32(FLO_MAGIC):
        raise ValueError(
            f"{path} is not a .flo file: it starts with {data[:4]!r}, not the magic "
            f"number {FLO_MAGIC} (b'PIEH')."
        )
    width, height = int(header["width"]), int(header["height"])
    if not (1 <= width <= _FLO_MAX_SIDE and 1 <= height <= _FLO_MAX_SIDE):
        raise ValueError(
            f"{path} has a bad .flo header: width {width} and height {height} must be "
            f"in [1, {_FLO_MAX_SIDE}]."
        )
    expected = height * width * 2 * 4
    body = data[_FLO_HEADER.itemsize :]
    if len(body) != expected:
        raise ValueError(
            f"{path} holds {len(body)} bytes of flow; a {width} x {height} flow needs "
            f"{expected}."
        )
    return np.frombuffer(body, "<f4").reshape(height, width, 2).astype(np.float32)
