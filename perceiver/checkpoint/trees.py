"""Parameter trees `{module: {name: array}}`: their checks and their differences."""

from typing import Any, Dict, List, Mapping

import numpy as np

from perceiver import safe_unpickle
from perceiver.checkpoint.errors import CheckpointError

try:  # Ships with jax; lets bfloat16 checkpoints written by `save` load again.
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

Tree = Dict[str, Dict[str, np.ndarray]]


def is_parameter_dtype(dtype: np.dtype) -> bool:
    """Numbers and booleans, the only element types a parameter tree holds."""
    return dtype.kind in "biufc" or (ml_dtypes is not None and dtype == ml_dtypes.bfloat16)


def leaf_path(*keys: str) -> str:
    """`[module][name]`, each key shortened, for messages."""
    return "".join(f"[{safe_unpickle.short(k, 100)}]" for k in keys)


def _nonfinite(tree: Tree, what: str) -> List[str]:
    lines = []
    for module, params in tree.items():
        for name, array in params.items():
            if array.dtype.kind in "fc" or (ml_dtypes is not None and array.dtype == ml_dtypes.bfloat16):
                bad = array.size - int(np.count_nonzero(np.isfinite(array)))
                if bad:
                    lines.append(f"{what}{leaf_path(module, name)} ({bad} of {array.size})")
    return lines


def check_finite(params: Tree, state: Tree, source: str) -> None:
    """Raises `CheckpointError` naming the arrays of file `source` that hold NaN or Inf."""
    bad = _nonfinite(params, "params") + _nonfinite(state, "state")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        arrays = "array" if len(bad) == 1 else "arrays"
        raise CheckpointError(
            f"{source} holds non-finite values (NaN or Inf) in {len(bad)} {arrays}: {shown}; "
            "a diverged or damaged model (perceiver.checkpoint.load(path, "
            "allow_nonfinite=True) reads it anyway)."
        )


def memory_tree(obj: Any, what: str) -> Tree:
    """Checks an in-memory `{module: {name: array}}` and returns numpy arrays.

    Raises:
      CheckpointError: if it is not a dict of dicts of numeric or boolean arrays.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} must be a dict of modules; got {type(obj).__name__}.")
    tree = {}
    for module, params in obj.items():
        if not isinstance(params, Mapping):
            raise CheckpointError(
                f"{what}[{module!r}] must be a dict of arrays; got {type(params).__name__}."
            )
        tree[str(module)] = {}
        for name, value in params.items():
            try:
                array = np.asarray(value)
            except Exception as e:  # e.g. ragged nested lists
                raise CheckpointError(
                    f"{what}[{module!r}][{name!r}] is not an array: {type(e).__name__}"
                ) from None
            if not is_parameter_dtype(array.dtype):
                raise CheckpointError(
                    f"{what}[{module!r}][{name!r}] has dtype {array.dtype}; "
                    "only numeric and boolean arrays are allowed."
                )
            tree[str(module)][str(name)] = array
    return tree


def tree_differences(expected: Mapping, found: Mapping) -> list:
    """Every difference between two `{module: {name: array-like}}` trees.

    Shapes are compared, and dtypes where both sides have them.

    Returns:
      sorted lines: "missing PATH (expected SHAPE)", "unexpected PATH (found
      SHAPE)", "mismatched PATH: expected SHAPE DTYPE, found SHAPE DTYPE".
    """

    def flat(tree):
        return {f"{m}/{n}": v for m, ps in tree.items() for n, v in ps.items()}

    want, got = flat(expected), flat(found)
    lines = []
    for key in sorted(set(want) | set(got)):
        if key not in got:
            lines.append(f"missing {key} (expected {_describe(want[key])})")
        elif key not in want:
            lines.append(f"unexpected {key} (found {_describe(got[key])})")
        else:
            w, g = want[key], got[key]
            same_dtype = (
                not hasattr(w, "dtype")
                or not hasattr(g, "dtype")
                or np.dtype(w.dtype) == np.dtype(g.dtype)
            )
            if tuple(np.shape(w)) != tuple(np.shape(g)) or not same_dtype:
                lines.append(f"mismatched {key}: expected {_describe(w)}, found {_describe(g)}")
    return lines


def _describe(x) -> str:
    dtype = f" {np.dtype(x.dtype).name}" if hasattr(x, "dtype") else ""
    return f"{list(np.shape(x))}{dtype}"


def differences_error(header: str, differences: List[str], shown: int = 12) -> CheckpointError:
    """A `CheckpointError` whose message counts differences by kind and shows a few.

    The full list is the error's `differences` attribute; the message stays
    short (a few thousand characters at most) however many there are.
    """
    kinds: Dict[str, List[str]] = {}
    for line in differences:
        kinds.setdefault(line.split(" ", 1)[0].rstrip(":"), []).append(line)
    counts = ", ".join(f"{len(lines)} {kind}" for kind, lines in sorted(kinds.items()))
    # A few of each kind, so that one kind of damage does not hide another.
    each = max(1, shown // max(1, len(kinds)))
    lines = [line for _, group in sorted(kinds.items()) for line in group[:each]]
    lines = [line if len(line) <= 160 else line[:160] + "..." for line in lines]
    more = len(differences) - len(lines)
    tail = [f"... and {more} more (the error's .differences lists all)"] if more > 0 else []
    return CheckpointError(
        f"{header} ({len(differences)} differences: {counts}):\n  " + "\n  ".join(lines + tail),
        differences,
    )


def check_tree(expected: Mapping, found: Mapping, what: str = "params") -> None:
    """Raises `CheckpointError` listing the differences between two trees (all in `.differences`)."""
    lines = tree_differences(expected, found)
    if lines:
        raise differences_error(f"{what} do not match the model", lines)
