"""Safe reading and atomic writing of checkpoints (`perceiver.checkpoint`).

Runs offline on the small 2021-format checkpoints in tests/data/reference and
on pickles crafted here; no network, no jax model.
"""

import collections
import io
import json
import os
import pickle
import pickletools

import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import checkpoint
from perceiver.checkpoint import CheckpointError

FLAT_MAPPING = ("haiku._src.data_structures", "FlatMapping")
# The files the reference README says were written with Haiku's FlatMapping.
WITH_FLAT_MAPPING = {"mlm", "flow", "imagenet_learned", "imagenet_conv"}


# ---------------------------------------------------------------------------
# Crafting pickles that name arbitrary globals
# ---------------------------------------------------------------------------


class Global:
    """A global as a pickle names it, whatever (if anything) Python has there."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle requires reduce's callable to be callable.
        raise AssertionError("only ever pickled")


class Call:
    """Pickles as `func(*args)`, followed by BUILD(state) when state is given."""

    def __init__(self, func, *args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        if self.state is None:
            return self.func, self.args
        return self.func, self.args, self.state


class _Crafter(pickle._Pickler):
    """The pure-Python pickler, taught to write a `Global` as the global it names.

    The C pickler checks that a global really exists; crafting bytes for,
    e.g., Haiku's removed FlatMapping must not need it.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_stand_in(self, obj):
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Global] = _save_stand_in


def craft(obj, protocol=3) -> bytes:
    buf = io.BytesIO()
    _Crafter(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def globals_named(data: bytes) -> set:
    """'module.name' of every GLOBAL / STACK_GLOBAL in a pickle."""
    names, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            names.add(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(arg, str):
            strings.append(arg)
    return names


class _TrustingUnpickler(pickle.Unpickler):
    """Plain unpickling (only for our own test data), FlatMapping as dict."""

    def find_class(self, module, name):
        if (module, name) == FLAT_MAPPING:
            return dict
        return super().find_class(module, name)


def trusted_load(path):
    with open(path, "rb") as f:
        return _TrustingUnpickler(f).load()


def assert_plain_tree(tree):
    assert type(tree) is dict
    for module, params in tree.items():
        assert type(module) is str and type(params) is dict
        for name, value in params.items():
            assert type(name) is str
            assert type(value) is np.ndarray, (module, name, type(value))
            assert value.dtype.kind in "biuf", (module, name, value.dtype)


def assert_trees_equal(actual, expected):
    assert sorted(actual) == sorted(expected)
    for module in expected:
        assert sorted(actual[module]) == sorted(expected[module]), module
        for name, want in expected[module].items():
            got = actual[module][name]
            assert np.asarray(got).dtype == np.asarray(want).dtype, (module, name)
            np.testing.assert_array_equal(got, want, err_msg=f"{module}/{name}")


def small_tree():
    rng = np.random.default_rng(0)
    params = {
        "linear": {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.zeros(4, np.float32)},
        "embed": {"embeddings": rng.integers(0, 9, size=(5, 2)).astype(np.int32)},
        "flags": {"mask": np.array([True, False]), "half": np.ones((2, 2), np.float16)},
    }
    state = {
        "batchnorm/~/mean_ema": {
            "average": np.full((1, 1, 1, 4), 0.5, np.float32),
            "counter": np.array(7, np.int32),  # 0-d, like Haiku's EMA counter.
        }
    }
    return params, state


# ---------------------------------------------------------------------------
# The published format: the small reference checkpoints
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ref.MODELS)
def test_loads_reference_checkpoint(model):
    path = ref.checkpoint_path(model)
    params, state = checkpoint.load(path)

    assert_plain_tree(params)
    assert_plain_tree(state)
    spec = ref.param_trees()[model]["small"]
    assert ref.tree_spec(params) == spec["params"]
    assert ref.tree_spec(state) == spec["state"]

    # Same arrays as a plain (trusting) unpickling gives.
    raw = trusted_load(path)
    if model.startswith("imagenet_"):
        assert set(raw) == {"params", "state"}
        assert_trees_equal(params, raw["params"])
        assert_trees_equal(state, raw["state"])
    else:
        assert_trees_equal(params, raw)
        assert state == {}

    # The files exercise both the FlatMapping and the plain-dict path.
    assert (".".join(FLAT_MAPPING) in globals_named(path.read_bytes())) == (
        model in WITH_FLAT_MAPPING
    )


def test_reference_state_only_for_conv_batchnorm():
    for model in ref.MODELS:
        _, state = checkpoint.load(ref.checkpoint_path(model))
        if model != "imagenet_conv":
            assert state == {}, model
    _, state = checkpoint.load(ref.checkpoint_path("imagenet_conv"))
    assert state
    assert all(module.endswith(("mean_ema", "var_ema")) for module in state)
    for module, entries in state.items():
        assert sorted(entries) == ["average", "counter", "hidden"], module
        assert entries["counter"].shape == () and entries["counter"].dtype == np.int32


def test_load_accepts_str_and_pathlike():
    path = ref.checkpoint_path("flow")
    a, _ = checkpoint.load(str(path))
    b, _ = checkpoint.load(path)
    assert_trees_equal(a, b)


# ---------------------------------------------------------------------------
# Malicious files are refused before anything in them runs
# ---------------------------------------------------------------------------


def test_control_payload_really_writes_a_file(tmp_path):
    # Proves the payloads below are live: a plain unpickler does create the file.
    target = tmp_path / "pwned"
    pickle.loads(craft(Call(Global("builtins", "open"), str(target), "w")))
    assert target.exists()


@pytest.mark.parametrize(
    "make, global_name",
    [
        (lambda t: pickle.dumps(Call(os.system, f"touch {t}"), protocol=3),
         f"{os.system.__module__}.system"),
        (lambda t: pickle.dumps(Call(os.system, f"touch {t}"), protocol=5),
         f"{os.system.__module__}.system"),
        (lambda t: craft(Call(Global("posix", "system"), f"touch {t}")), "posix.system"),
        (lambda t: craft(Call(Global("builtins", "open"), str(t), "w")), "builtins.open"),
        (lambda t: craft(Call(Global("builtins", "open"), str(t), "w"), protocol=4),
         "builtins.open"),
        (lambda t: pickle.dumps(Call(open, str(t), "w"), protocol=2), f"{open.__module__}.open"),
        (lambda t: craft(Call(Global("builtins", "eval"), f"open({str(t)!r}, 'w')")),
         "builtins.eval"),
        (lambda t: craft(Call(Global("builtins", "exec"), f"open({str(t)!r}, 'w')")),
         "builtins.exec"),
        (lambda t: craft(Call(Global("subprocess", "check_call"), ["touch", str(t)])),
         "subprocess.check_call"),
    ],
)
def test_refuses_code_execution(tmp_path, make, global_name):
    target = tmp_path / "pwned"
    # Hidden inside an otherwise valid tree, as an attacker would.
    data = make(target)
    path = tmp_path / "evil.pystate"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert global_name in str(info.value)
    assert str(path) in str(info.value)
    assert not target.exists()


def test_refuses_payload_nested_in_a_real_looking_tree(tmp_path):
    target = tmp_path / "pwned"
    tree = {
        "linear": {"w": np.ones((2, 2), np.float32)},
        "evil": {"b": Call(Global("builtins", "open"), str(target), "w")},
    }
    with pytest.raises(CheckpointError, match="builtins.open"):
        checkpoint.loads(craft(tree))
    assert not target.exists()


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_refuses_object_arrays(protocol):
    tree = {"m": {"w": np.array([1, "x", None], dtype=object)}}
    with pytest.raises(CheckpointError, match="object"):
        checkpoint.loads(pickle.dumps(tree, protocol=protocol))


def test_refuses_structured_dtype_with_object_field():
    tree = {"m": {"w": np.zeros(2, dtype=[("a", "f4"), ("b", "O")])}}
    with pytest.raises(CheckpointError, match="object"):
        checkpoint.loads(pickle.dumps(tree, protocol=3))


def test_refuses_dtype_state_claiming_objects():
    # A void dtype whose pickled state sets numpy's "holds references" flag.
    class FlagPickler(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, np.dtype) and obj.kind == "V":
                func, args, state = obj.__reduce__()
                return func, args, state[:-1] + (1,)
            return NotImplemented

    buf = io.BytesIO()
    FlagPickler(buf, protocol=3).dump({"m": {"w": np.zeros(2, "V8")}})
    with pytest.raises(CheckpointError, match="dtype"):
        checkpoint.loads(buf.getvalue())


@pytest.mark.parametrize("value", ["a string", None, {"nested": 1}, [[1, 2], [3]]])
def test_refuses_non_numeric_values(value):
    with pytest.raises(CheckpointError, match=r"params\['m'\]\['w'\]"):
        checkpoint.loads(pickle.dumps({"m": {"w": value}}, protocol=3))


@pytest.mark.parametrize("dtype", ["U1", "S3", "M8[s]", "m8[s]", "V4", [("a", "f4")]])
def test_refuses_non_numeric_dtypes(dtype):
    # Refused when the dtype is built, before any array exists.
    with pytest.raises(CheckpointError, match="dtype"):
        checkpoint.loads(pickle.dumps({"m": {"w": np.zeros(2, dtype)}}, protocol=3))


class _Build:
    """Pickles as `target` itself followed by BUILD(state) (see `_save_build`)."""

    def __init__(self, target, state):
        self.target, self.state = target, state


def _save_build(pickler, obj):
    # No reduce tuple expresses "BUILD onto a global", so write the opcodes.
    pickler.save(obj.target)
    pickler.save(obj.state)
    pickler.write(pickle.BUILD)


_Crafter.dispatch[_Build] = _save_build


@pytest.mark.parametrize(
    "state",
    [
        (None, {"__defaults__": (5,)}),  # Slot state: setattr on the function.
        {"marker": 1},  # Dict state: into the function's __dict__.
    ],
)
def test_refuses_modifying_allowed_globals(state):
    # A file must not be able to change how later files load.
    scalar = Global("numpy.core.multiarray", "scalar")
    evil = craft({"m": {"w": np.float32(1)}, "x": {"y": _Build(scalar, state)}})
    with pytest.raises(CheckpointError, match="state of numpy.core.multiarray.scalar"):
        checkpoint.loads(evil)
    params, _ = checkpoint.loads(craft({"m": {"w": np.float32(1)}}))
    assert params["m"]["w"] == np.float32(1)


def test_refuses_calling_ndarray_directly():
    data = craft({"m": {"w": Call(Global("numpy", "ndarray"), (4,), "f4")}})
    with pytest.raises(CheckpointError, match="numpy.ndarray"):
        checkpoint.loads(data)


@pytest.mark.parametrize("encoding", ["zlib_codec", "base64", "rot13", "utf-8"])
def test_refuses_codecs_other_than_latin1(encoding):
    # Protocol 2 needs _codecs.encode(text, 'latin1'); other codecs could,
    # e.g., inflate a small file into gigabytes.
    encode = Call(Global("_codecs", "encode"), "eJzLSM3JyVcozy/KSQEAGgQEXQ==", encoding)
    data = craft({"m": {"w": encode}})
    with pytest.raises(CheckpointError, match="_codecs.encode"):
        checkpoint.loads(data)


def test_huge_reconstruct_shape_allocates_nothing():
    # numpy's own _reconstruct would try to allocate 4 TB here; an array that
    # never gets its state (shape and bytes) is refused.
    reconstruct = Global("numpy.core.multiarray", "_reconstruct")
    data = craft({"m": {"w": Call(reconstruct, Global("numpy", "ndarray"), (10**12,), b"f")}})
    with pytest.raises(CheckpointError, match="never received its data"):
        checkpoint.loads(data)


# ---------------------------------------------------------------------------
# Damaged and foreign files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ref.MODELS)
def test_truncated_checkpoint(tmp_path, model):
    data = ref.checkpoint_path(model).read_bytes()
    path = tmp_path / f"{model}.pystate"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", [0, 1, 2, 100, -1])
def test_checkpoint_cut_anywhere(tmp_path, cut):
    data = ref.checkpoint_path("imagenet_conv").read_bytes()
    path = tmp_path / "cut.pystate"
    path.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(CheckpointError, match="cut.pystate"):
        checkpoint.load(path)


@pytest.mark.parametrize(
    "name, content",
    [
        ("random.bin", np.random.default_rng(0).bytes(4096)),
        ("notes.txt", b"These are not the weights you are looking for.\n" * 10),
        ("params.json", json.dumps({"linear": {"w": [[1.0, 2.0]]}}).encode()),
        ("weights.npz", None),  # A zip file, filled in below.
        ("int.pickle", pickle.dumps(3)),
        ("list.pickle", pickle.dumps([np.zeros(3)])),
    ],
)
def test_foreign_file(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        np.savez(path, w=np.zeros(3))
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "nope.pystate")


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def test_save_params_only_is_a_plain_pickle(tmp_path):
    params, _ = small_tree()
    path = tmp_path / "params.pystate"
    checkpoint.save(path, params)
    with open(path, "rb") as f:
        raw = pickle.load(f)
    assert_trees_equal(raw, params)
    for state in (None, {}):
        checkpoint.save(path, params, state)
        with open(path, "rb") as f:
            assert_trees_equal(pickle.load(f), params)


def test_save_with_state_is_a_plain_pickle(tmp_path):
    params, state = small_tree()
    path = tmp_path / "with_state.pystate"
    checkpoint.save(path, params, state)
    with open(path, "rb") as f:
        raw = pickle.load(f)
    assert set(raw) == {"params", "state"}
    assert_trees_equal(raw["params"], params)
    assert_trees_equal(raw["state"], state)


@pytest.mark.parametrize("with_state", [False, True])
def test_save_then_load(tmp_path, with_state):
    params, state = small_tree()
    path = tmp_path / "sub" / "dir" / "ckpt.pystate"  # Directories are created.
    checkpoint.save(path, params, state if with_state else None)
    loaded_params, loaded_state = checkpoint.load(path)
    assert_trees_equal(loaded_params, params)
    assert_trees_equal(loaded_state, state if with_state else {})
    assert os.listdir(path.parent) == ["ckpt.pystate"]


def test_dumps_matches_save(tmp_path):
    params, state = small_tree()
    path = tmp_path / "a.pystate"
    checkpoint.save(path, params, state)
    assert path.read_bytes() == checkpoint.dumps(params, state)
    loaded_params, loaded_state = checkpoint.loads(checkpoint.dumps(params, state))
    assert_trees_equal(loaded_params, params)
    assert_trees_equal(loaded_state, state)


def test_reference_checkpoint_round_trips(tmp_path):
    params, state = checkpoint.load(ref.checkpoint_path("imagenet_conv"))
    path = tmp_path / "again.pystate"
    checkpoint.save(path, params, state)
    again_params, again_state = checkpoint.load(path)
    assert_trees_equal(again_params, params)
    assert_trees_equal(again_state, state)


def test_save_jax_arrays_including_bfloat16(tmp_path):
    jnp = pytest.importorskip("jax.numpy")
    params = {"m": {"w": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.arange(3, dtype=jnp.float32)}}
    path = tmp_path / "jax.pystate"
    checkpoint.save(path, params)
    loaded, _ = checkpoint.load(path)
    assert loaded["m"]["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(loaded["m"]["w"].astype(np.float32), np.ones((2, 3)))
    np.testing.assert_array_equal(loaded["m"]["b"], np.arange(3, dtype=np.float32))


def test_save_refuses_what_load_would_refuse(tmp_path):
    path = tmp_path / "ckpt.pystate"
    path.write_bytes(b"old")
    with pytest.raises(CheckpointError):
        checkpoint.save(path, {"m": {"w": np.array([None])}})
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["ckpt.pystate"]


def test_save_uses_the_usual_permissions(tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    old = os.umask(0o022)
    try:
        checkpoint.save(tmp_path / "ckpt.pystate", small_tree()[0])
    finally:
        os.umask(old)
    assert (tmp_path / "ckpt.pystate").stat().st_mode & 0o777 == 0o644


def _fail_midway_dump(obj, file, protocol=None):
    file.write(pickle.dumps(obj, protocol=protocol)[:100])  # Some bytes reach the disk ...
    raise OSError(28, "No space left on device")  # ... then the write fails.


def _fail(*args, **kwargs):
    raise OSError(5, "Input/output error")


@pytest.mark.parametrize(
    "target, replacement",
    [
        ("files.pickle.dump", _fail_midway_dump),
        ("atomic_write.os.fsync", _fail),
        ("atomic_write.os.replace", _fail),
    ],
)
@pytest.mark.parametrize("existing", [False, True])
def test_save_is_atomic(tmp_path, monkeypatch, target, replacement, existing):
    submodule, module, attr = target.split(".")
    monkeypatch.setattr(getattr(getattr(checkpoint, submodule), module), attr, replacement)
    path = tmp_path / "ckpt.pystate"
    if existing:
        path.write_bytes(b"the old checkpoint")
    with pytest.raises(OSError):
        checkpoint.save(path, *small_tree())
    if existing:
        assert path.read_bytes() == b"the old checkpoint"
        assert os.listdir(tmp_path) == ["ckpt.pystate"]
    else:
        assert os.listdir(tmp_path) == []  # Neither the final file nor a temp file.


def test_save_interrupted(tmp_path, monkeypatch):
    def interrupted_dump(obj, file, protocol=None):
        file.write(b"\x80\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.files.pickle, "dump", interrupted_dump)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path / "ckpt.pystate", small_tree()[0])
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# Other writers: numpy 2 / protocol 5, FlatMapping, OrderedDict
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_loads_plain_pickles_of_any_protocol(protocol):
    params, state = small_tree()
    params["odd"] = {
        "fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        "strided": np.arange(20, dtype=np.float64)[::3],
        "scalar": np.int32(3),  # A numpy scalar, not a 0-d array.
        "big_endian": np.arange(4, dtype=">f4"),
    }
    data = pickle.dumps({"params": params, "state": state}, protocol=protocol)
    loaded_params, loaded_state = checkpoint.loads(data)
    assert_trees_equal(loaded_state, state)
    # What numpy itself unpickles, in the machine's byte order (load converts).
    plain = pickle.loads(data)["params"]
    native = lambda v: np.asarray(v).astype(np.asarray(v).dtype.newbyteorder("="))
    expected = {m: {n: native(v) for n, v in p.items()} for m, p in plain.items()}
    assert_trees_equal(loaded_params, expected)
    np.testing.assert_array_equal(loaded_params["odd"]["big_endian"], np.arange(4))
    if protocol == 5 and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        # numpy 2's protocol-5 path (the one newer checkpoints take).
        assert "numpy._core.numeric._frombuffer" in globals_named(data)


def test_loads_numpy_1_global_names():
    # numpy 1.x wrote numpy.core.*; numpy 2 writes numpy._core.*.
    tree = {"m": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    data = pickle.dumps(tree, protocol=3)
    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert "numpy.core.multiarray._reconstruct" in globals_named(data)
    params, _ = checkpoint.loads(data)
    assert_trees_equal(params, tree)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_loads_flat_mapping_as_dict(protocol):
    flat_mapping = Global(*FLAT_MAPPING)
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    linear = Call(flat_mapping, {"w": w, "b": np.zeros(3, np.float32)})
    tree = Call(flat_mapping, {"linear": linear})
    data = craft({"params": tree, "state": Call(flat_mapping, {})}, protocol=protocol)
    assert ".".join(FLAT_MAPPING) in globals_named(data)
    params, state = checkpoint.loads(data)
    assert type(params) is dict and type(params["linear"]) is dict
    assert_trees_equal(params, {"linear": {"w": w, "b": np.zeros(3, np.float32)}})
    assert state == {}


def test_loads_ordered_dicts_as_dict():
    tree = collections.OrderedDict(
        linear=collections.OrderedDict(w=np.ones(2, np.float32))
    )
    params, _ = checkpoint.loads(pickle.dumps(tree, protocol=3))
    assert type(params) is dict and type(params["linear"]) is dict
    assert_trees_equal(params, {"linear": {"w": np.ones(2, np.float32)}})


def test_allowed_globals_are_documented():
    for (module, name), (obj, why) in checkpoint.ALLOWED_GLOBALS.items():
        assert module and name and obj is not None and why


# ---------------------------------------------------------------------------
# Comparing trees
# ---------------------------------------------------------------------------


def test_tree_differences_reports_every_damage():
    expected, _ = checkpoint.load(ref.checkpoint_path("mlm"))
    found = {m: dict(p) for m, p in expected.items()}
    module = sorted(found)[0]
    names = sorted(found[module])
    assert len(names) >= 1
    removed = f"{module}/{names[0]}"
    del found[module][names[0]]
    found["extra_module"] = {"w": np.zeros((7, 5), np.float32)}
    # Reshape and retype two arrays in other modules.
    others = [m for m in sorted(found) if m not in (module, "extra_module")]
    reshaped_module, retyped_module = others[:2]
    reshaped_name = sorted(found[reshaped_module])[0]
    retyped_name = sorted(found[retyped_module])[0]
    original_shape = expected[reshaped_module][reshaped_name].shape
    found[reshaped_module][reshaped_name] = np.zeros(original_shape + (2,), np.float32)
    found[retyped_module][retyped_name] = expected[retyped_module][retyped_name].astype(np.float16)

    lines = checkpoint.tree_differences(expected, found)
    assert len(lines) == 4, lines
    missing = [l for l in lines if l.startswith("missing")]
    assert missing == [
        f"missing {removed} (expected {list(expected[module][names[0]].shape)} float32)"
    ]
    unexpected = [l for l in lines if l.startswith("unexpected")]
    assert unexpected == ["unexpected extra_module/w (found [7, 5] float32)"]
    mismatched = sorted(l for l in lines if l.startswith("mismatched"))
    retyped_shape = list(expected[retyped_module][retyped_name].shape)
    assert mismatched == sorted(
        [
            f"mismatched {reshaped_module}/{reshaped_name}: expected {list(original_shape)} "
            f"float32, found {list(original_shape) + [2]} float32",
            f"mismatched {retyped_module}/{retyped_name}: expected {retyped_shape} float32, "
            f"found {retyped_shape} float16",
        ]
    )

    with pytest.raises(CheckpointError) as info:
        checkpoint.check_tree(expected, found, what="params")
    message = str(info.value)
    assert "4 differences" in message
    for line in lines:  # All four, in one message.
        assert line in message


def test_tree_differences_of_equal_trees_is_empty():
    params, state = checkpoint.load(ref.checkpoint_path("imagenet_conv"))
    assert checkpoint.tree_differences(params, params) == []
    checkpoint.check_tree(state, state, what="state")


def test_tree_differences_with_shape_only_values():
    # Shape-and-dtype descriptions (like jax.ShapeDtypeStruct) or bare lists
    # as the found side must not crash the comparison.
    class Spec:
        def __init__(self, shape, dtype):
            self.shape, self.dtype = shape, np.dtype(dtype)

    expected = {"m": {"w": Spec((2, 3), "float32"), "b": Spec((3,), "float32")}}
    found = {"m": {"w": np.zeros((2, 3), np.float32), "b": [0.0, 0.0]}}
    assert checkpoint.tree_differences(expected, found) == [
        "mismatched m/b: expected [3] float32, found [2]"
    ]


# ---------------------------------------------------------------------------
# Descriptions beside a checkpoint
# ---------------------------------------------------------------------------


def test_description_round_trips_as_json(tmp_path):
    path = tmp_path / "model.pystate"
    description = {"factory": "optical_flow", "sizes": {"image_shape": (32, 48), "num_latents": np.int64(8)},
                   "task": {"min_overlap": 4}, "labels": ["cat", "dog"], "anything": [1, "x"]}
    checkpoint.save(path, *small_tree(), description=description)
    assert checkpoint.description_path(path) == str(tmp_path / "model.json")
    with open(tmp_path / "model.json") as f:
        written = json.load(f)  # Plain JSON that any tool reads.
    assert written["sizes"] == {"image_shape": [32, 48], "num_latents": 8}
    assert written["format"] == checkpoint.DESCRIPTION_FORMAT
    assert checkpoint.read_description(path) == written
    assert_trees_equal(checkpoint.load(path)[0], small_tree()[0])  # The pickle is unchanged.


def test_save_without_description_keeps_the_existing_one(tmp_path):
    path = tmp_path / "model.pystate"
    checkpoint.save(path, *small_tree(), description={"factory": "optical_flow"})
    checkpoint.save(path, *small_tree())
    assert checkpoint.read_description(path)["factory"] == "optical_flow"
    assert checkpoint.read_description(tmp_path / "other.pystate") == {}


@pytest.mark.parametrize(
    "description, match",
    [([1, 2], "JSON object"), ({"sizes": [1]}, "'sizes' must be a dict"),
     ({"labels": ["a", 3]}, "list of str"), ({"sizes": {"x": object()}}, "not JSON")],
)
def test_bad_descriptions_are_refused_before_writing(tmp_path, description, match):
    path = tmp_path / "model.pystate"
    with pytest.raises(CheckpointError, match=match):
        checkpoint.save(path, *small_tree(), description=description)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "content, match",
    [(b"{not json", "is not JSON"), (b"[1]", "JSON object"), (b"\xff\xfe", "is not JSON"),
     (b'{"task": 3}', "'task' must be a dict")],
)
def test_damaged_description_names_its_file(tmp_path, content, match):
    (tmp_path / "model.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        checkpoint.read_description(tmp_path / "model.pystate")
    assert str(tmp_path / "model.json") in str(info.value) and len(str(info.value)) < 400


def test_huge_description_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint.description, "MAX_DESCRIPTION_BYTES", 100)
    (tmp_path / "model.json").write_text('{"description": "' + "x" * 200 + '"}')
    with pytest.raises(CheckpointError, match="larger than 100 bytes"):
        checkpoint.read_description(tmp_path / "model.pystate")


def test_loads_pickled_jax_arrays_as_numpy():
    # What `pickle.dump(params)` writes for Haiku params fresh from `init`.
    import jax.numpy as jnp
    import ml_dtypes

    tree = {"linear": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3, jnp.bfloat16)},
            "bn": {"counter": jnp.array(3, jnp.int32)}}
    for protocol in (2, 4, 5):
        params, _ = checkpoint.loads(pickle.dumps(tree, protocol=protocol))
        assert_plain_tree({m: {n: v for n, v in p.items() if v.dtype != ml_dtypes.bfloat16} for m, p in params.items()})
        np.testing.assert_array_equal(params["linear"]["w"], np.arange(6.0).reshape(2, 3))
        assert params["linear"]["b"].dtype == ml_dtypes.bfloat16 and params["bn"]["counter"] == 3


def test_refuses_jax_array_rebuilt_with_another_function(tmp_path):
    target = tmp_path / "pwned"
    rebuild = Call(Global("jax._src.array", "_reconstruct_array"),
                   Global("builtins", "open"), (str(target), "w"), (), {})
    with pytest.raises(CheckpointError, match="builtins.open"):
        checkpoint.loads(craft({"m": {"w": rebuild}}))
    rebuild = Call(Global("jax._src.array", "_reconstruct_array"),
                   Global("numpy", "dtype"), ("f4",), (), {})
    with pytest.raises(CheckpointError, match="something other than numpy's _reconstruct"):
        checkpoint.loads(craft({"m": {"w": rebuild}}))
    assert not target.exists()


# ---------------------------------------------------------------------------
# safetensors: chosen by the file's extension
# ---------------------------------------------------------------------------

import re  # noqa: E402  (with the tests it serves)



def _needs_safetensors():
    return pytest.importorskip("safetensors.numpy", reason="needs safetensors (pip install 'perceiver-io-jax[hf]')")


def _bf16_tree():
    import ml_dtypes

    params, state = small_tree()
    params["linear"]["w16"] = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
    params["module/~/nested"] = {"w": np.ones((2, 2), np.float64)[:, ::-1]}  # Not C-contiguous.
    return params, state


def test_safetensors_round_trip_with_bfloat16_and_state(tmp_path):
    st_numpy = _needs_safetensors()
    params, state = _bf16_tree()
    path = tmp_path / "model.safetensors"
    checkpoint.save(path, params, state, description={"factory": "optical_flow"})
    loaded, loaded_state = checkpoint.load(path)
    for want, got in ((params, loaded), (state, loaded_state)):
        assert got.keys() == want.keys()
        for module in want:
            assert got[module].keys() == want[module].keys()
            for name, value in want[module].items():
                assert got[module][name].dtype == value.dtype and got[module][name].shape == value.shape
                np.testing.assert_array_equal(got[module][name], value)
    assert loaded_state["batchnorm/~/mean_ema"]["counter"].shape == ()  # 0-d stays 0-d.
    assert checkpoint.read_description(path)["factory"] == "optical_flow"
    # The keys, as any safetensors reader sees them.
    raw = st_numpy.load_file(str(path))
    assert "linear/w" in raw and "module/~/nested/w" in raw
    assert "state/batchnorm/~/mean_ema/counter" in raw
    assert path.read_bytes()[:1] != b"\x80"  # Not a pickle.


def test_save_chooses_the_format_by_extension(tmp_path):
    _needs_safetensors()
    params, state = small_tree()
    checkpoint.save(tmp_path / "a.pystate", params, state)
    checkpoint.save(tmp_path / "b.SafeTensors", params, state)
    assert (tmp_path / "a.pystate").read_bytes()[:1] == b"\x80"
    header = (tmp_path / "b.SafeTensors").read_bytes()
    assert json.loads(header[8 : 8 + int.from_bytes(header[:8], "little")])["__metadata__"] == {
        "format": checkpoint.SAFETENSORS_FORMAT
    }
    assert checkpoint.load(tmp_path / "b.SafeTensors")[0].keys() == params.keys()


@pytest.mark.parametrize(
    "params, match",
    [
        ({"state/linear": {"w": np.zeros(2)}}, "module 'state/linear' cannot be saved as safetensors"),
        ({"linear": {"w": np.zeros(2, np.complex128)}}, "dtype complex128, which safetensors cannot hold"),
        ({"linear": {"a/b": np.zeros(2)}}, "a leaf name must be non-empty and hold no '/'"),
    ],
)
def test_safetensors_refuses_trees_it_cannot_hold_before_writing(tmp_path, params, match):
    _needs_safetensors()
    with pytest.raises(CheckpointError, match=re.escape(match)):
        checkpoint.save(tmp_path / "m.safetensors", params)
    assert os.listdir(tmp_path) == []


def _safetensors_file(path, header, data=b"", length=None):
    raw = json.dumps(header).encode()
    length = len(raw) if length is None else length
    path.write_bytes(length.to_bytes(8, "little") + raw + data)
    return path


def _hostile_safetensors(tmp):
    f32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    zeros = b"\0" * 8
    nan = np.array([1.0, np.nan], np.float32).tobytes()
    return {
        "length_past_file": (_safetensors_file(tmp / "a.safetensors", {"m/w": f32}, zeros, 10**6), "past the end of the"),
        "huge_header": (_safetensors_file(tmp / "b.safetensors", {"m/w": f32}, zeros, 1 << 40), "at most 16777216 allowed"),
        "object_dtype": (_safetensors_file(tmp / "c.safetensors", {"m/w": dict(f32, dtype="O")}, zeros), "has dtype 'O'; only numbers"),
        "float8_dtype": (_safetensors_file(tmp / "d.safetensors", {"m/w": dict(f32, dtype="F8_E4M3", data_offsets=[0, 2])}, b"\0\0"), "has dtype 'F8_E4M3'"),
        "overlapping": (
            _safetensors_file(tmp / "e.safetensors", {"m/w": f32, "m/v": dict(f32, data_offsets=[4, 12])}, b"\0" * 12),
            "not a readable safetensors file",
        ),
        "short_data": (_safetensors_file(tmp / "f.safetensors", {"m/w": dict(f32, shape=[4], data_offsets=[0, 16])}, zeros), "not a readable safetensors file"),
        "not_json": (_safetensors_file(tmp / "g.safetensors", {}, b"", 0), "header is not JSON"),
        "tiny_file": (tmp / "h.safetensors", "too short for a safetensors header"),
        "nan": (_safetensors_file(tmp / "i.safetensors", {"m/w": f32}, nan), "holds non-finite values (NaN or Inf) in 1 array: params['m']['w'] (1 of 2)"),
        "not_our_names": (_safetensors_file(tmp / "j.safetensors", {"perceiver.embeddings.latents": f32}, zeros), "is not named MODULE/NAME"),
    }


def test_hostile_safetensors_are_refused_naming_the_file(tmp_path):
    _needs_safetensors()
    (tmp_path / "h.safetensors").write_bytes(b"\x05\0\0")
    cases = _hostile_safetensors(tmp_path)
    for name, (path, message) in cases.items():
        with pytest.raises(CheckpointError) as e:
            checkpoint.load(path)
        text = str(e.value)
        assert text.startswith(str(path)), (name, text)
        assert message in text, (name, text)
        assert len(text) < 400, (name, text)
    assert len(cases) == 10
    params, _ = checkpoint.load(cases["nan"][0], allow_nonfinite=True)  # As for pickles.
    assert np.isnan(params["m"]["w"][1])


def test_safetensors_without_the_package_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "safetensors", None)  # `import safetensors` now fails.
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    for call in (
        lambda: checkpoint.load(tmp_path / "m.safetensors"),
        lambda: checkpoint.save(tmp_path / "m.safetensors", *small_tree()),
    ):
        with pytest.raises(ImportError, match=re.escape("pip install 'perceiver-io-jax[hf]'")) as e:
            call()
        assert "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []
