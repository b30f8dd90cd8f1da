"""Record Perceiver AR test fixtures from the authors' reference code.

Runs google-research/perceiver-ar (Haiku) on small configurations with
deterministic random parameters and writes, next to this file:

* ``<config>.npz``: parameters (``param/<module>/<name>``), the parameters as
  initialised by the reference with ``PRNGKey(INIT_SEED)``
  (``init/<module>/<name>``), inputs (``in/...``) and outputs (``out/...``) of
  one ``is_training=False`` call;
* ``<config>_cached.npz``: a cached (memory) decoding driven the way the
  reference's ``sample_utils`` / ``inference.ipynb`` drive it, plus the
  equivalent uncached calls;
* ``configs.json``: constructor kwargs, call kwargs, parameter trees, file
  contents and the cached-decoding protocols.

The reference is only imported, never copied. It needs jax, dm-haiku, flax,
chex and ml_collections (use a separate virtual environment). Run from the
repository root:

    PERCEIVER_AR_REFERENCE=/path/to/perceiver-ar/checkout \
        python tests/data/perceiver_ar/record_reference.py

Set PERCEIVER_AR_REFERENCE_COMMIT to record the reference's commit in
configs.json. Two shims make the 2022 reference run on current jax:
``jnp.DeviceArray`` (a type annotation) is aliased to ``jax.Array``, and the
removed ``jax.tree_map`` to ``jax.tree_util.tree_map`` (``sample_utils`` uses
it when it resets memory).
"""

import importlib.metadata
import json
import os
import re
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np

jnp.DeviceArray = jax.Array
if not hasattr(jax, "tree_map"):
    jax.tree_map = jax.tree_util.tree_map

sys.path.insert(0, os.environ["PERCEIVER_AR_REFERENCE"])

import haiku as hk  # noqa: E402
from perceiver_ar import perceiver_ar_model  # noqa: E402
from perceiver_ar import sample_utils  # noqa: E402

OUT_DIR = os.path.dirname(os.path.abspath(__file__))
INIT_SEED = 0
APPLY_SEED = 1
PARAM_STD = 0.5
# hk.Embed tables built from a fixed position encoding (sinusoidal) keep their
# initial values so that the fixture also pins the table's formula.
KEEP_INITIAL = re.compile(r"^perceiver_ar/~/embed_\d+/embeddings$")

# input_embed_dim differs from num_z_channels so that shape mix-ups show
# (cross-attention q/k/v width is input_embed_dim, its output num_z_channels).
BASE = dict(
    num_classes=24,
    input_idx_size=[-1],
    max_context_length=32,
    input_embed_dim=12,
    num_z_channels=16,
    z_index_dim=8,
    num_transformers_per_block=2,
    num_transformer_heads=2,
    num_cross_attend_heads=1,
)


def make_tokens(seed, batch, length, lengths=None):
    """Tokens in 1..num_classes-1; row b is zero-padded after lengths[b]."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, BASE["num_classes"], size=(batch, length)).astype(
        np.int32
    )
    if lengths is not None:
        for b, n in enumerate(lengths):
            x[b, n:] = 0
    return x


# name -> (constructor overrides, call kwargs, input builder, notes)
CONFIGS = [
    (
        "absolute_padded",
        dict(position_encoding_type="absolute"),
        {},
        dict(seed=10, length=24, lengths=[24, 17]),
        "(a) absolute sinusoidal, input_idx_size=[-1] (=max_context_length), "
        "terminal-relative positions, row 1 padded",
    ),
    (
        "rotary_partial",
        dict(
            position_encoding_type="rotary",
            fraction_to_rotate=0.5,
            fraction_heads_to_rotate=0.5,
            max_wavelength=64,
            num_cross_attend_heads=2,
        ),
        {},
        dict(seed=11, length=32),
        "(b) rotary, half the channels of half the heads rotated "
        "(1 of 2 heads in both cross- and self-attention)",
    ),
    (
        "rotary_padded",
        dict(position_encoding_type="rotary"),
        {},
        dict(seed=12, length=24, lengths=[24, 13]),
        "(c) rotary with default fractions (0.25 of channels, all heads), "
        "max_wavelength 8192, row 1 padded",
    ),
    (
        "rotary_negative_zoverride",
        dict(
            position_encoding_type="rotary", use_negative_rotary_positions=True
        ),
        dict(z_index_dim=4),
        dict(seed=13, length=24, lengths=[24, 19]),
        "(d)+(k) call-time z_index_dim=4 < constructor's 8; "
        "use_negative_rotary_positions=True",
    ),
    (
        "absolute_z1",
        dict(position_encoding_type="absolute"),
        dict(z_index_dim=1),
        dict(seed=14, length=24, lengths=[24, 17]),
        "z_index_dim=1 at call time: no masks (encoder/processor mask are "
        "None), latent_last_steps = T-1 for every row even when padded",
    ),
    (
        "rotary_mlp_query",
        dict(position_encoding_type="rotary", initial_query_embed_style="mlp"),
        {},
        dict(seed=15, length=28, lengths=[28, 20]),
        "(e) initial_query_embed_style='mlp' (2 layers, sq_relu)",
    ),
    (
        "absolute_learned_query",
        dict(
            position_encoding_type="absolute",
            initial_query_embed_style="learned",
        ),
        {},
        dict(seed=16, length=24, lengths=[24, 18]),
        "(f) learned, unshared initial query [z_index_dim, num_z_channels]",
    ),
    (
        "rotary_learned_shared_query",
        dict(
            position_encoding_type="rotary",
            initial_query_embed_style="learned",
            share_learned_initial_query=True,
        ),
        {},
        dict(seed=17, length=24),
        "(f) learned initial query shared over latents [1, num_z_channels]",
    ),
    (
        "absolute_latents_per_position2",
        dict(position_encoding_type="absolute", num_latents_per_position=2),
        {},
        dict(seed=18, length=24, lengths=[24, 15]),
        "(g) num_latents_per_position=2: 4 unique positions x 2 latents, "
        "z_pos_enc, AvgPool over the 2 latents -> logits [B, 4, C]",
    ),
    (
        "absolute_gelu_extra_cross",
        dict(
            position_encoding_type="absolute",
            activation_name="gelu",
            final_layer_init_zeros=False,
            additional_cross_attend_after_layers=[0],
        ),
        {},
        dict(seed=19, length=24, lengths=[24, 21]),
        "(h)+(i) additional cross-attend after self-attention 0; gelu; "
        "final_layer_init_zeros=False",
    ),
    (
        "rotary_extra_cross",
        dict(
            position_encoding_type="rotary",
            additional_cross_attend_after_layers=[0],
        ),
        {},
        dict(seed=20, length=24, lengths=[24, 5]),
        "(h) additional cross-attend after self-attention 0, with rotary "
        "positions; row 1 (length 5) is shorter than z_index_dim, so its "
        "first 3 latents are invalid (last step -1)",
    ),
    (
        "absolute_short_rows",
        dict(position_encoding_type="absolute"),
        {},
        dict(seed=23, length=24, lengths=[6, 0]),
        "rows shorter than z_index_dim: row 0 has 6 tokens (2 invalid "
        "latents), row 1 is all padding (every latent invalid, last step -1)",
    ),
    (
        "rotary_query_offsetting",
        dict(
            position_encoding_type="rotary",
            initial_query_offsetting=True,
            max_wavelength=32,
        ),
        {},
        dict(seed=21, length=32, lengths=[32, 25]),
        "(j) initial_query_offsetting=True: latent query positions + 1 in "
        "every layer, max_wavelength incremented by 1 (32 -> 33)",
    ),
    (
        "absolute_positions_from_data_2d",
        dict(
            position_encoding_type="absolute",
            use_positions_from_data=True,
            input_idx_size=[40, 3],
        ),
        {},
        dict(seed=22, length=24, lengths=[24, 18], idxs="2d"),
        "absolute, use_positions_from_data=True, two index dimensions; "
        "position encodings = sum of one sinusoidal table per dimension, "
        "indexed by input_idxs (not terminal-relative)",
    ),
]


def forward_fn(ctor):
    def fwd(
        inputs,
        input_idxs,
        context=None,
        is_training=False,
        memory_type="none",
        memory=None,
        z_index_dim=None,
    ):
        del context
        model = perceiver_ar_model.PerceiverAR(**ctor)
        return model(
            inputs,
            input_idxs,
            is_training,
            memory_type=memory_type,
            memory=memory,
            z_index_dim=z_index_dim,
        )

    return hk.transform_with_state(fwd)


def randomize(params):
    out = {}
    for mod in params:
        out[mod] = {}
        for name, value in params[mod].items():
            path = f"{mod}/{name}"
            if KEEP_INITIAL.match(path):
                out[mod][name] = np.asarray(value)
            else:
                rng = np.random.default_rng(zlib.crc32(path.encode()))
                out[mod][name] = (
                    PARAM_STD * rng.standard_normal(value.shape)
                ).astype(np.asarray(value).dtype)
    return out


def tree_shapes(params):
    return {
        m: {n: list(v.shape) for n, v in params[m].items()} for m in params
    }


def flat(prefix, params):
    return {
        f"{prefix}/{m}/{n}": np.asarray(v)
        for m in params
        for n, v in params[m].items()
    }


def save(name, arrays):
    path = os.path.join(OUT_DIR, f"{name}.npz")
    np.savez_compressed(path, **arrays)
    return os.path.getsize(path)


def record_plain(name, overrides, call_kwargs, spec, note, meta):
    ctor = dict(BASE, **overrides)
    tokens = make_tokens(spec["seed"], 2, spec["length"], spec.get("lengths"))
    idxs = None
    if spec.get("idxs") == "2d":
        t = np.arange(1, spec["length"] + 1)
        idxs = (
            np.stack([t, t % 3], axis=-1)[None].repeat(2, 0).astype(np.int32)
        )
        idxs[tokens == 0] = 0
    fwd = forward_fn(ctor)
    init_params, state = fwd.init(
        jax.random.PRNGKey(INIT_SEED),
        tokens,
        idxs,
        is_training=False,
        **call_kwargs,
    )
    params = randomize(init_params)
    out, _ = fwd.apply(
        params,
        state,
        jax.random.PRNGKey(APPLY_SEED),
        tokens,
        idxs,
        is_training=False,
        **call_kwargs,
    )
    out2, _ = fwd.apply(
        params,
        state,
        jax.random.PRNGKey(APPLY_SEED + 1),
        tokens,
        idxs,
        is_training=False,
        **call_kwargs,
    )
    assert np.array_equal(
        out.input_events_logits, out2.input_events_logits
    ), "logits depend on the rng at is_training=False"
    assert np.all(np.isfinite(out.input_events_logits))

    arrays = {"in/inputs": tokens}
    arrays.update(flat("param", params))
    arrays.update(flat("init", init_params))
    if idxs is not None:
        arrays["in/input_idxs"] = idxs
    none_outputs = []
    for key in (
        "input_events_logits",
        "encoder_mask",
        "processor_mask",
        "latent_last_steps",
    ):
        value = getattr(out, key)
        if value is None:
            none_outputs.append(key)
        else:
            arrays[f"out/{key}"] = np.asarray(value)
    size = save(name, arrays)
    meta[name] = dict(
        note=note,
        file=f"{name}.npz",
        constructor_kwargs=ctor,
        call_kwargs=dict(
            is_training=False,
            memory_type="none",
            memory=None,
            z_index_dim=call_kwargs.get("z_index_dim"),
            use_remat=False,
            input_idxs="in/input_idxs" if idxs is not None else None,
        ),
        none_outputs=none_outputs,
        output_dtypes={
            k[4:]: str(v.dtype)
            for k, v in arrays.items()
            if k.startswith("out/")
        },
        output_shapes={
            k[4:]: list(v.shape)
            for k, v in arrays.items()
            if k.startswith("out/")
        },
        param_tree=tree_shapes(init_params),
        params_kept_at_init=[
            f"{m}/{n}"
            for m in init_params
            for n in init_params[m]
            if KEEP_INITIAL.match(f"{m}/{n}")
        ],
        bytes=size,
    )
    print(
        f"{name}: {size} bytes, logits {out.input_events_logits.shape}, "
        f"|logits| max {np.abs(out.input_events_logits).max():.3g}"
    )


# ----------------------------------------------------------------------------
# Cached decoding, following sample_utils.sample_position and the notebook.
# ----------------------------------------------------------------------------


def memory_arrays(prefix, memory):
    arrays = {}
    for layer, m in enumerate(memory):
        for field in ("k", "v", "kv_positions", "memory_mask"):
            value = getattr(m, field)
            if value is not None:
                arrays[f"{prefix}/layer{layer}/{field}"] = np.asarray(value)
    return arrays


# sample_utils.initialize_memory sizes the cross-attend memory with
# num_z_channels // num_cross_attend_heads, i.e. it assumes
# input_embed_dim == num_z_channels.
CACHED_BASE = dict(input_embed_dim=16)


def record_sampler(
    name, overrides, start_step, num_steps, note, meta, batch=2, seed=30
):
    """Cached sampling with sample_utils.sample_position and fixed_size_kv."""
    ctor = dict(BASE, **CACHED_BASE, **overrides)
    max_context_length = ctor["max_context_length"]
    max_events_length = max_context_length + 1
    mcl_memory = max_context_length
    zid_memory = ctor["z_index_dim"]

    events = np.zeros([batch, max_events_length], np.int32)
    events[:, :start_step] = make_tokens(seed, batch, start_step)
    event_idxs = np.broadcast_to(
        np.arange(1, max_events_length + 1, dtype=np.int32)[None, :, None],
        (batch, max_events_length, 1),
    ).copy()

    fwd = forward_fn(ctor)
    init_params, state = fwd.init(
        jax.random.PRNGKey(INIT_SEED),
        events[:, :start_step],
        event_idxs[:, :start_step],
        is_training=False,
    )
    params = randomize(init_params)

    calls = []

    def recording_forward(rng, inputs, input_idxs, context=None, **kwargs):
        out, st = fwd.apply(
            params, state, rng, inputs, input_idxs, context=context, **kwargs
        )
        calls.append(
            dict(
                inputs=np.asarray(inputs),
                input_idxs=np.asarray(input_idxs),
                z_index_dim=kwargs["z_index_dim"],
                memory_type=kwargs["memory_type"],
                memory_in=list(kwargs["memory"]),
                out=out,
            )
        )
        return out, st

    memory = sample_utils.initialize_memory(
        batch_size=batch,
        num_transformers_per_block=ctor["num_transformers_per_block"],
        num_cross_attend_heads=ctor["num_cross_attend_heads"],
        num_transformer_heads=ctor["num_transformer_heads"],
        num_z_channels=ctor["num_z_channels"],
        max_context_length_memory=mcl_memory,
        z_index_dim_memory=zid_memory,
        position_encoding_type=ctor["position_encoding_type"],
        memory_type="fixed_size_kv",
    )
    args = dict(
        forward_fn=recording_forward,
        event_idxs=jnp.asarray(event_idxs),
        modality="raw",
        temperature=1.0,
        top_p=1.0,
        use_memory=True,
    )
    rng = jax.random.PRNGKey(APPLY_SEED)
    state_tuple = (jnp.asarray(events), rng, memory)
    steps = []
    # Under disable_jit lax.cond runs only the branch taken, on the very list
    # it is given; reset_memory assigns into that list, so hand it a copy.
    with jax.disable_jit():
        for k in range(num_steps):
            i = start_step + k
            n_before = len(calls)
            condition_on = "all_previous" if k == 0 else "most_recent_only"
            mem_before = state_tuple[2]
            full = (
                k > 0
                and int(np.sum(mem_before[1].memory_mask[0])) == zid_memory
            )
            state_tuple = sample_utils.sample_position(
                i=i,
                events_rng_memory=(
                    state_tuple[0],
                    state_tuple[1],
                    list(mem_before),
                ),
                condition_on=condition_on,
                **args,
            )
            assert len(calls) == n_before + 1
            kind = "prime" if k == 0 else ("reset" if full else "step")
            steps.append(
                dict(
                    i=i,
                    kind=kind,
                    call=calls[-1],
                    memory_after=state_tuple[2],
                    tokens=np.asarray(state_tuple[0])[:, i],
                )
            )
    final_events = np.asarray(state_tuple[0])

    arrays = {
        "in/events_initial": events,
        "in/event_idxs": event_idxs,
        "out/events_final": final_events,
    }
    arrays.update(flat("param", params))
    protocol_steps = []
    for k, s in enumerate(steps):
        c, p = s["call"], f"step{k:02d}"
        arrays[f"{p}/inputs"] = c["inputs"]
        arrays[f"{p}/input_idxs"] = c["input_idxs"]
        arrays[f"{p}/logits"] = np.asarray(c["out"].input_events_logits)
        arrays[f"{p}/latent_last_steps"] = np.asarray(
            c["out"].latent_last_steps
        )
        arrays[f"{p}/tokens"] = s["tokens"]
        arrays.update(
            memory_arrays(f"{p}/memory_out", c["out"].perceiver_state)
        )
        if s["kind"] == "reset":
            arrays.update(memory_arrays(f"{p}/memory_in", c["memory_in"]))
            arrays.update(
                memory_arrays(f"{p}/memory_after", s["memory_after"])
            )
        # The equivalent uncached call: the same prefix, with as many latents
        # as the self-attention memory holds after this step.
        n_valid = int(np.sum(np.asarray(s["memory_after"][1].memory_mask[0])))
        i = s["i"]
        out, _ = fwd.apply(
            params,
            state,
            jax.random.PRNGKey(APPLY_SEED),
            final_events[:, :i],
            event_idxs[:, :i],
            is_training=False,
            z_index_dim=n_valid,
        )
        unc = np.asarray(out.input_events_logits)
        arrays[f"{p}/uncached_logits"] = unc
        err = np.max(
            np.abs(unc[:, -1] - arrays[f"{p}/logits"][:, -1])
            / (np.abs(unc[:, -1]).max() + 1e-30)
        )
        assert err < 1e-4, (name, k, err)
        fed = {
            "prime": f"events[:, :{i}]",
            "step": f"events[:, {i - 1}:{i}]",
            "reset": f"events[:, :-1] (whole buffer, zeros from {i} on)",
        }[s["kind"]]
        protocol_steps.append(
            dict(
                step=k,
                kind=s["kind"],
                predicts_position=i,
                inputs=fed,
                inputs_shape=list(c["inputs"].shape),
                z_index_dim=c["z_index_dim"],
                self_attention_latents_valid_after=n_valid,
                uncached_equivalent=(
                    f"model(events_final[:, :{i}], event_idxs[:, :{i}], "
                    f"z_index_dim={n_valid})"
                ),
                max_rel_err_vs_uncached=float(err),
            )
        )
    # One uncached call over the longest stretch without a reset.
    first_reset = next(
        (k for k, s in enumerate(steps) if s["kind"] == "reset"), len(steps)
    )
    t_full = start_step + first_reset - 1
    out, _ = fwd.apply(
        params,
        state,
        jax.random.PRNGKey(APPLY_SEED),
        final_events[:, :t_full],
        event_idxs[:, :t_full],
        is_training=False,
        z_index_dim=first_reset,
    )
    arrays["uncached/inputs"] = final_events[:, :t_full]
    arrays["uncached/input_idxs"] = event_idxs[:, :t_full]
    arrays["uncached/logits"] = np.asarray(out.input_events_logits)
    for k in range(first_reset):
        np.testing.assert_allclose(
            arrays["uncached/logits"][:, k],
            arrays[f"step{k:02d}/logits"][:, -1],
            rtol=1e-4,
            atol=1e-4,
        )
    size = save(f"{name}_cached", arrays)
    meta[f"{name}_cached"] = dict(
        note=note,
        file=f"{name}_cached.npz",
        constructor_kwargs=ctor,
        param_tree=tree_shapes(init_params),
        protocol=dict(
            source="sample_utils.sample_position as driven by inference.ipynb "
            "(use_memory=True, temperature=1, top_p=1: tokens drawn with "
            "jax.random.categorical). To test, replay the recorded "
            "tokens (stepXX/tokens, out/events_final) instead of "
            "sampling",
            memory_type="fixed_size_kv",
            memory_init="sample_utils.initialize_memory(batch_size=%d, "
            "max_context_length_memory=%d, z_index_dim_memory=%d, "
            "memory_type='fixed_size_kv'): one AttentionState per "
            "layer [cross-attend, self_attention_0, ...]; k, v "
            "zeros [B, M, heads, channels/heads] float32 with M = "
            "max_context_length_memory for layer 0 and "
            "z_index_dim_memory for the others; kv_positions int32 "
            "zeros [B, M] (rotary) or None (absolute); memory_mask "
            "float32 zeros [B, M]" % (batch, mcl_memory, zid_memory),
            events="int32 [B, max_context_length+1]; events[:, :start_step] "
            "prompt (in/events_initial), rest zeros; step k writes "
            "its sampled token (stepXX/tokens, drawn from "
            "logits[:, -1]) to events[:, start_step+k]",
            event_idxs="arange(1, max_context_length+2) as [B, L, 1] "
            "(1-based positions), sliced like events",
            every_call="is_training=False, memory_type='fixed_size_kv', "
            "memory=<current memory>, use_positions_from_data=True, "
            "fresh rng (logits do not depend on it); the returned "
            "output.perceiver_state is the next memory",
            prime="step 0 (condition_on='all_previous', i=start_step): inputs "
            "events[:, :i], z_index_dim=1",
            step="condition_on='most_recent_only' while "
            "sum(memory[1].memory_mask[0]) < z_index_dim_memory: inputs "
            "events[:, i-1:i], input_idxs event_idxs[:, i-1:i], "
            "z_index_dim=1",
            reset="when sum(memory[1].memory_mask[0]) == z_index_dim_memory: "
            "memory[0] := zeros_like; memory[1:] := zeros with M = "
            "z_index_dim_memory//2 (R); call on events[:, :-1], "
            "event_idxs[:, :-1] with z_index_dim=R; then memory[0] "
            "fields x := roll(where(arange(M0) < i, x, 0), -i, axis=1) "
            "(keep the i real inputs, right-aligned) and memory[1:] "
            "fields are left-padded with zeros to z_index_dim_memory "
            "along axis 1 (stepXX/memory_in, stepXX/memory_after)",
            start_step=start_step,
            num_steps=num_steps,
            max_context_length_memory=mcl_memory,
            z_index_dim_memory=zid_memory,
            steps=protocol_steps,
            file_keys="stepXX/{inputs,input_idxs,logits (full "
            "input_events_logits),latent_last_steps,tokens,"
            "memory_out/layerL/{k,v,kv_positions,memory_mask},"
            "uncached_logits}; reset steps also memory_in/ and "
            "memory_after/; uncached/{inputs,input_idxs,logits}: one "
            "uncached call with z_index_dim = steps before the first "
            "reset, whose latent k equals stepk/logits[:, -1]",
        ),
        bytes=size,
    )
    print(
        f"{name}_cached: {size} bytes, kinds " f"{[s['kind'] for s in steps]}"
    )


def record_kv(
    name, overrides, start_step, num_steps, note, meta, batch=2, seed=40
):
    """memory_type='kv': growing memory, primed with memory=None."""
    ctor = dict(BASE, **CACHED_BASE, **overrides)
    length = start_step + num_steps
    tokens = make_tokens(seed, batch, length)
    idxs = np.broadcast_to(
        np.arange(1, length + 1, dtype=np.int32)[None, :, None],
        (batch, length, 1),
    ).copy()
    fwd = forward_fn(ctor)
    init_params, state = fwd.init(
        jax.random.PRNGKey(INIT_SEED),
        tokens[:, :start_step],
        idxs[:, :start_step],
        is_training=False,
    )
    params = randomize(init_params)
    arrays = {"in/inputs": tokens, "in/input_idxs": idxs}
    arrays.update(flat("param", params))
    memory = None
    for k in range(num_steps):
        lo = 0 if k == 0 else start_step + k - 1
        hi = start_step + k
        out, _ = fwd.apply(
            params,
            state,
            jax.random.PRNGKey(APPLY_SEED + k),
            tokens[:, lo:hi],
            idxs[:, lo:hi],
            is_training=False,
            memory_type="kv",
            memory=memory,
            z_index_dim=1,
        )
        memory = out.perceiver_state
        arrays[f"step{k:02d}/inputs"] = tokens[:, lo:hi]
        arrays[f"step{k:02d}/input_idxs"] = idxs[:, lo:hi]
        arrays[f"step{k:02d}/logits"] = np.asarray(out.input_events_logits)
    arrays.update(memory_arrays("final_memory", memory))
    t_full = start_step + num_steps - 1
    out, _ = fwd.apply(
        params,
        state,
        jax.random.PRNGKey(APPLY_SEED),
        tokens[:, :t_full],
        idxs[:, :t_full],
        is_training=False,
        z_index_dim=num_steps,
    )
    arrays["uncached/logits"] = np.asarray(out.input_events_logits)
    for k in range(num_steps):
        np.testing.assert_allclose(
            arrays["uncached/logits"][:, k],
            arrays[f"step{k:02d}/logits"][:, 0],
            rtol=1e-4,
            atol=1e-4,
        )
    size = save(f"{name}_cached", arrays)
    meta[f"{name}_cached"] = dict(
        note=note,
        file=f"{name}_cached.npz",
        constructor_kwargs=ctor,
        param_tree=tree_shapes(init_params),
        protocol=dict(
            source="model-level memory_type='kv' (sample_utils does not use "
            "it); teacher-forced tokens in/inputs",
            memory_type="kv",
            memory_init="None: step 0 is called with memory=None, "
            "memory_type='kv' and returns AttentionState(k, v, "
            "kv_positions, memory_mask=None) per layer",
            prime="step 0: inputs[:, :%d], input_idxs[:, :%d], z_index_dim=1, "
            "memory=None" % (start_step, start_step),
            step="step k>0: inputs[:, s+k-1:s+k], input_idxs likewise (s = "
            "start_step), z_index_dim=1, memory = previous "
            "output.perceiver_state; k/v/kv_positions are concatenated "
            "on axis 1 (memory first), no mask",
            start_step=start_step,
            num_steps=num_steps,
            file_keys=(
                "stepXX/{inputs,input_idxs,logits [B, 1, C]}; "
                "final_memory/layerL/{k,v,kv_positions}; uncached/logits = "
                f"model(inputs[:, :{t_full}], input_idxs[:, :{t_full}], "
                f"z_index_dim={num_steps}), latent k == stepk"
            ),
        ),
        bytes=size,
    )
    print(f"{name}_cached: {size} bytes")


def main():
    meta = {}
    for name, overrides, call_kwargs, spec, note in CONFIGS:
        record_plain(name, overrides, call_kwargs, spec, note, meta)
    record_sampler(
        "rotary_sampler",
        dict(
            position_encoding_type="rotary",
            use_positions_from_data=True,
            max_wavelength=64,
        ),
        start_step=12,
        num_steps=11,
        note="rotary, use_positions_from_data; cached sampling with a "
        "memory reset at step 8",
        meta=meta,
    )
    record_sampler(
        "absolute_sampler",
        dict(
            position_encoding_type="absolute",
            use_positions_from_data=True,
            input_idx_size=[34],
        ),
        start_step=12,
        num_steps=11,
        note="absolute, use_positions_from_data (input_idx_size must be "
        "explicit: event idxs reach max_context_length+1); cached "
        "sampling with a memory reset at step 8",
        meta=meta,
        seed=31,
    )
    record_kv(
        "rotary_kv",
        dict(
            position_encoding_type="rotary",
            use_positions_from_data=True,
            max_wavelength=64,
        ),
        start_step=10,
        num_steps=6,
        note="rotary, memory_type='kv' growing cache",
        meta=meta,
    )
    header = dict(
        reference="google-research/perceiver-ar",
        reference_commit=os.environ.get(
            "PERCEIVER_AR_REFERENCE_COMMIT", "unknown"
        ),
        versions={
            p: importlib.metadata.version(p)
            for p in ("jax", "jaxlib", "dm-haiku", "flax", "chex", "numpy")
        },
        init_seed=INIT_SEED,
        apply_seed=APPLY_SEED,
        params="param/<module>/<name> = %g * standard_normal(shape) from "
        "numpy default_rng(zlib.crc32('<module>/<name>')), except "
        "hk.Embed tables built from a fixed position encoding "
        "(perceiver_ar/~/embed_N/embeddings), kept as initialised; "
        "init/<module>/<name> = reference init with "
        "PRNGKey(init_seed) on the same call" % PARAM_STD,
        transform="hk.transform_with_state (state is empty); apply needs an "
        "rng (hk.next_rng_key is drawn by make_block_causal_masks "
        "and by every dropout call even at rate 0); logits are "
        "independent of it at is_training=False (checked)",
    )
    meta = dict(_about=header, **meta)
    text = json.dumps(meta, indent=1)
    # Keep short lists of numbers (shapes) on one line.
    text = re.sub(
        r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]",
        lambda m: "[%s]" % ", ".join(x.strip() for x in m.group(1).split(",")),
        text,
    )
    with open(os.path.join(OUT_DIR, "configs.json"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
