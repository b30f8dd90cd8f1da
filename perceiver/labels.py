"""Class names shipped with the package: ImageNet-1k and Kinetics-700.

The lists are in the order of the published models' logits.
"""

import functools
from importlib import resources
from typing import Tuple


def _read(filename: str) -> Tuple[str, ...]:
    text = resources.files("perceiver").joinpath("data", filename).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


@functools.lru_cache(maxsize=None)
def imagenet_labels() -> Tuple[str, ...]:
    """The 1000 ImageNet class names, index i naming logit i."""
    return _read("imagenet_labels.txt")


@functools.lru_cache(maxsize=None)
def kinetics700_labels() -> Tuple[str, ...]:
    """The 700 Kinetics-700 class names, index i naming logit i."""
    return _read("kinetics700_labels.txt")
