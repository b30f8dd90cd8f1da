"""Rematerialisation that saves memory on every backend, XLA:CPU included."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp


def checkpoint(fun):
    """`jax.checkpoint` whose backward recomputation waits for the cotangent.

    XLA:CPU drops the optimisation barriers that keep `jax.checkpoint`'s
    recomputation apart from the forward pass, merges the two and stores
    every intermediate, so `jax.checkpoint` saves no memory there. Here the
    recomputation's array inputs are made to depend, arithmetically but
    without changing their values, on the incoming cotangent, so it can only
    run in the backward pass, on every backend.

    Args:
      fun: a pure function of arrays (pytrees allowed, keyword arguments too).

    Returns:
      `fun`, with the same values and gradients.
    """

    @functools.wraps(fun)
    def wrapped(*args, **kwargs):
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))

        def call(*leaves):
            a, k = jax.tree_util.tree_unflatten(treedef, leaves)
            return fun(*a, **k)

        # Every value `fun` closes over becomes an explicit input, integer
        # tracers included: `jax.closure_convert` hoists only floats, and a
        # closed-over integer tracer (a scan's index, a mask) would leak into
        # the backward pass, which runs in another trace (under `jit(grad)`
        # of a loop of chunks that failed to lower).
        closed, out_shape = jax.make_jaxpr(call, return_shape=True)(*leaves)
        out_tree = jax.tree_util.tree_structure(out_shape)
        num_leaves = len(leaves)

        def pure(*inputs):
            flat = jax.core.eval_jaxpr(closed.jaxpr, inputs[num_leaves:], *inputs[:num_leaves])
            return jax.tree_util.tree_unflatten(out_tree, flat)

        num_tied = len(jax.tree_util.tree_leaves(args))
        return _checkpointed(pure, num_tied, *leaves, *closed.consts)

    return wrapped


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _checkpointed(pure, num_tied, *inputs):
    del num_tied
    return pure(*inputs)


def _checkpointed_fwd(pure, num_tied, *inputs):
    del num_tied
    return pure(*inputs), inputs


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _checkpointed_bwd(pure, num_tied, inputs, cotangent):
    floats = [c for c in jax.tree_util.tree_leaves(cotangent) if _is_float(c) and c.size]
    if floats:
        # Zero (even for non-finite cotangents), but only known once the
        # cotangent is: no compiler may move the recomputation before it.
        tie = 0.0 * jnp.nan_to_num(floats[0].ravel()[0])
        inputs = tuple(
            x + tie.astype(x.dtype) if i < num_tied and _is_float(x) else x
            for i, x in enumerate(inputs)
        )
    _, vjp = jax.vjp(pure, *inputs)
    return vjp(cotangent)


_checkpointed.defvjp(_checkpointed_fwd, _checkpointed_bwd)


def haiku_checkpoint(fun, **unused):
    """`hk.remat` built on `checkpoint`, so that it saves memory on every backend."""
    try:
        from haiku._src.stateful import thread_hk_state_in_kwargs  # Haiku's own hk.remat helper
    except ImportError:  # pragma: no cover - a future Haiku without it
        return hk.remat(fun)
    return thread_hk_state_in_kwargs(checkpoint)(fun)
