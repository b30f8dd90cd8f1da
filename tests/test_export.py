"""Exported models (`perceiver.export`, `perceiver export`) run with jax alone and agree with the reference."""

import functools
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import checkpoint, cli, export, models

pytest.importorskip("flatbuffers")  # jax.export's serialization needs it (the `export` extra)

# Run in a fresh interpreter that never imports perceiver: each export is
# deserialized and called on the recorded inputs, the outputs saved as .npz.
RUNNER = r"""
import json, sys
import jax
import numpy as np
jobs = json.loads(sys.argv[1])
for job in jobs:
    with open(job["export"], "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    with np.load(job["inputs"]) as z:
        inputs = [z[f"input{i}"] for i in range(len(z.files))]
    out = exported.call(*inputs)
    flat = out if isinstance(out, dict) else {"out": out}
    np.savez(job["outputs"], **{k: np.asarray(v) for k, v in flat.items()})
assert not any(name == "perceiver" or name.startswith("perceiver.") for name in sys.modules)
"""


def _described_copy(tmp_path: pathlib.Path, model: str) -> str:
    factory, sizes = ref.SMALL_FACTORIES[model]
    path = tmp_path / f"{model}.pystate"
    shutil.copy(ref.checkpoint_path(model), path)
    checkpoint.save_description(path, {"factory": factory, "sizes": dict(sizes)})
    return str(path)


def _inputs_and_expected(model: str, batch: int):
    """The recorded inputs' first example repeated `batch` times, and the reference's outputs for it."""
    inputs, expected = ref.recorded(model)
    args = ref.factory_inputs(model, inputs)
    arrays = [np.concatenate([a[:1]] * batch) for a in args if isinstance(a, np.ndarray)]
    expected = expected if isinstance(expected, dict) else {"out": expected}
    expected = {k: np.concatenate([v[:1]] * batch) for k, v in expected.items()}
    return args, arrays, expected


def _decoded_at(model: str, outputs, args):
    """The outputs an export (which decodes every output) gives at the reference's subsampled points."""
    if model != "video_autoencoding":
        return outputs
    subsampling = args[2]
    _, sizes = ref.SMALL_FACTORIES[model]
    patch = sizes["samples_per_patch"]
    audio = outputs["audio"].reshape(outputs["audio"].shape[0], -1, patch)
    return {
        "image": outputs["image"][:, subsampling["image"]],
        "audio": audio[:, subsampling["audio"]].reshape(audio.shape[0], -1),
        "label": outputs["label"],
    }


# The two families the reference does not have, at small sizes, with random
# weights: their exports are compared with the model's own apply.
OWN_FAMILIES = {
    "text_classifier": dict(
        num_classes=3, max_seq_len=32, d_model=16, num_latents=8, num_latent_channels=32,
        num_self_attends=1, num_heads=2, qk_channels=16,
    ),
    "byte_language_model": dict(
        max_context_length=32, num_latents=8, num_channels=32, num_layers=2, num_heads=2
    ),
}


def _own_family(tmp_path, factory):
    """`(path, arrays, expected)`: a random model saved with its description, and its outputs at batch 2."""
    sizes = OWN_FAMILIES[factory]
    model = getattr(models, factory)(**sizes)
    rng = np.random.default_rng(0)
    if factory == "text_classifier":
        tokens = rng.integers(6, 262, (2, 32)).astype(np.int32)
        arrays = [tokens, np.ones_like(tokens)]
    else:
        arrays = [rng.integers(3, 259, (2, 32)).astype(np.int32)]
    params, state = model.init(jax.random.PRNGKey(0), *arrays, is_training=False)
    out, _ = jax.jit(functools.partial(model.apply, is_training=False))(params, state, None, *arrays)
    path = tmp_path / f"{factory}.pystate"
    checkpoint.save(path, params, state, description={"factory": factory, "sizes": sizes})
    if factory == "byte_language_model":
        out = {"input_events_logits": out.input_events_logits}
    else:
        out = {"out": out}
    return str(path), arrays, jax.tree_util.tree_map(np.asarray, out)


def _round_trips(tmp_path, own_families, reference_models):
    """Exports each model, runs them all in a process without perceiver, compares with the expected outputs."""
    jobs, expectations = [], {}
    for factory in own_families:
        path, arrays, expected = _own_family(tmp_path, factory)
        export.save(export.export(path), tmp_path / f"{factory}.jaxexport")
        np.savez(tmp_path / f"{factory}-in.npz", **{f"input{i}": a for i, a in enumerate(arrays)})
        jobs.append({
            "export": str(tmp_path / f"{factory}.jaxexport"),
            "inputs": str(tmp_path / f"{factory}-in.npz"),
            "outputs": str(tmp_path / f"{factory}-out.npz"),
        })
        expectations[factory] = (None, expected)
    for model in reference_models:
        # A dynamic batch, called with 2: one export serves any batch.
        exported = export.export(_described_copy(tmp_path, model))
        assert "batch" in str(exported.in_avals[0].shape[0])
        args, arrays, expected = _inputs_and_expected(model, 2)
        export.save(exported, tmp_path / f"{model}.jaxexport")
        np.savez(tmp_path / f"{model}-in.npz", **{f"input{i}": a for i, a in enumerate(arrays)})
        jobs.append({
            "export": str(tmp_path / f"{model}.jaxexport"),
            "inputs": str(tmp_path / f"{model}-in.npz"),
            "outputs": str(tmp_path / f"{model}-out.npz"),
        })
        expectations[model] = (args, expected)
    subprocess.run([sys.executable, "-c", RUNNER, json.dumps(jobs)], check=True, cwd=tmp_path)
    for model, job in zip(expectations, jobs):
        args, expected = expectations[model]
        with np.load(job["outputs"]) as z:
            outputs = {k: z[k] for k in z.files}
        got = _decoded_at(model, outputs, args)
        assert set(expected) <= set(got), model
        for key, want in expected.items():
            scale = np.abs(want).max()
            np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-5 * scale, err_msg=model)


@pytest.mark.slow  # every family: about 45 s on 2 cores
def test_every_family_exported_runs_without_the_package_and_matches_the_reference(tmp_path):
    _round_trips(tmp_path, OWN_FAMILIES, ref.MODELS)


def test_an_exported_classifier_and_language_model_run_without_the_package(tmp_path):
    # One of the reference's models and one of our own, in one fresh process.
    _round_trips(tmp_path, ["byte_language_model"], ["imagenet_conv"])


def test_a_fixed_batch_export_refuses_another_batch(tmp_path):
    exported = export.export(_described_copy(tmp_path, "imagenet_fourier"), batch=3)
    assert exported.in_avals[0].shape[0] == 3
    export.save(exported, tmp_path / "m.jaxexport")
    loaded = export.load(tmp_path / "m.jaxexport")
    _, arrays, expected = _inputs_and_expected("imagenet_fourier", 3)
    np.testing.assert_allclose(np.asarray(loaded.call(*arrays)), expected["out"], rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception):
        loaded.call(arrays[0][:2])


@pytest.mark.parametrize("batch", [0, -1, 1.5, True, "any", 2**31])
def test_bad_batch_is_refused(tmp_path, batch):
    with pytest.raises(ValueError, match=r"batch must be a positive int \(at most 2147483647\) or 'dynamic'"):
        export.export(_described_copy(tmp_path, "mlm"), batch=batch)


def test_a_checkpoint_without_description_is_refused(tmp_path):
    path = tmp_path / "bare.pystate"
    shutil.copy(ref.checkpoint_path("mlm"), path)
    with pytest.raises(checkpoint.CheckpointError, match="no description"):
        export.export(str(path))


def test_without_flatbuffers_the_cli_names_the_extra_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "flatbuffers", None)  # as if not installed
    out = tmp_path / "m.jaxexport"
    assert cli.main(["export", _described_copy(tmp_path, "mlm"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'perceiver-io-jax[export]'" in err
    assert not out.exists()


def test_load_refuses_a_file_that_is_not_an_export(tmp_path):
    path = tmp_path / "x.jaxexport"
    path.write_bytes(b"not an export")
    with pytest.raises(checkpoint.CheckpointError, match="is not a model exported with jax.export"):
        export.load(path)


def test_cli_exports_and_refuses_bad_options(tmp_path, capsys):
    source = _described_copy(tmp_path, "flow")
    out = tmp_path / "flow.jaxexport"
    assert cli.main(["export", source, "-o", str(out), "--batch", "2"]) == 0
    said = capsys.readouterr().out
    assert f"wrote {out}" in said and "float32[2, 2, 12, 16, 3]" in said
    assert export.load(out).in_avals[0].shape == (2, 2, 12, 16, 3)
    before = out.read_bytes()
    for argv, message in [
        (["--batch", "0"], "--batch must be a positive integer (at most 2147483647) or 'dynamic'"),
        (["--batch", "two"], "--batch must be a positive integer (at most 2147483647) or 'dynamic'"),
        (["--batch", "99999999999"], "got '99999999999'"),
    ]:
        assert cli.main(["export", source, "-o", str(out), *argv]) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["export", source, "-o", str(tmp_path / "flow.bin")]) == 2
    assert "-o must end in .jaxexport" in capsys.readouterr().err
    assert out.read_bytes() == before  # nothing overwritten by a refused command
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]
