"""Makes tests/data/hf/<arch>/: tiny random transformers Perceivers, their inputs and outputs.

Needs torch and transformers, which the project does not depend on; the
fixtures were made with torch 2.13.0 (CPU) and transformers 4.57.6 (the last
release whose `save_pretrained(safe_serialization=False)` still writes
`pytorch_model.bin`):

    pip install torch==2.13.0 transformers==4.57.6
    python tests/make_hf_fixtures.py            # writes tests/data/hf/
    python tests/make_hf_fixtures.py --measure mlm imagenet_learned imagenet_fourier imagenet_conv
                                                # transformers vs ours at the published sizes

For each of the seven architectures it builds a tiny random model (every
parameter drawn at random, rounded to float16 values so that the float16
files hold exactly the float32 model), saves it with `save_pretrained`
(safetensors for all, float16 where transformers' fixed widths make the model
large; `pytorch_model.bin` as well for 'mlm' and 'conv'), and writes
`io.npz` with the inputs (in our layout: channels last) and two sets of
outputs: `hf_*`, transformers' own, and `undone_*`, transformers' with its
deviations from DeepMind's reference undone on the torch side (tanh GELU,
no decoder query residual for the learned classifier, TF SAME padding for
the conv stem). See docs/guides/hf_measurements.md.
"""

import argparse
import copy
import os
import shutil

import numpy as np
import torch
import transformers
from torch import nn
from transformers import PerceiverConfig

HERE = os.path.dirname(os.path.abspath(__file__))
TANH_GELU = "gelu_pytorch_tanh"


def _config(**kwargs) -> PerceiverConfig:
    base = dict(
        num_latents=4,
        d_latents=16,
        num_self_attends_per_block=2,
        num_self_attention_heads=2,
        num_cross_attention_heads=1,
        num_blocks=1,
    )
    base.update(kwargs)
    return PerceiverConfig(**base)


# name -> (transformers class, config, safetensors dtype, also write pytorch_model.bin).
SPECS = {
    "mlm": (
        transformers.PerceiverForMaskedLM,
        # transformers fixes the decoder at 8 heads of 8 * 32 qk channels.
        _config(
            d_model=8,
            num_self_attention_heads=8,
            num_cross_attention_heads=8,
            qk_channels=256,
            v_channels=16,
            max_position_embeddings=16,
        ),
        torch.float32,
        True,
    ),
    "text": (
        transformers.PerceiverForSequenceClassification,
        # The MLM's encoder; its sizes are all the config's (qk 8, v = d_latents).
        _config(
            d_model=8,
            num_cross_attention_heads=2,
            qk_channels=8,
            v_channels=16,
            max_position_embeddings=16,
            num_labels=3,
        ),
        torch.float16,
        False,
    ),
    "learned": (
        transformers.PerceiverForImageClassificationLearned,
        _config(image_size=8, num_blocks=2, num_labels=5),
        torch.float16,
        False,
    ),
    "fourier": (
        transformers.PerceiverForImageClassificationFourier,
        _config(num_self_attends_per_block=1, num_labels=5),
        torch.float16,
        False,
    ),
    "conv": (
        transformers.PerceiverForImageClassificationConvProcessing,
        _config(num_self_attends_per_block=1, num_labels=5),
        torch.float16,
        True,
    ),
    "flow": (
        transformers.PerceiverForOpticalFlow,
        # Saved with the tanh GELU: transformers' own outputs then equal ours.
        _config(num_self_attends_per_block=1, train_size=[8, 12], hidden_act="gelu_new"),
        torch.float16,
        False,
    ),
    "video": (
        transformers.PerceiverForMultimodalAutoencoding,
        # transformers' image_size is the 4x4 patch grid's side: 8x8 pixels.
        _config(
            num_self_attends_per_block=1,
            num_frames=2,
            image_size=2,
            audio_samples_per_frame=16,
            samples_per_patch=4,
            output_shape=[1, 2, 8, 8],
            output_num_channels=8,
            num_labels=5,
            _label_trainable_num_channels=8,
        ),
        torch.float16,
        False,
    ),
}


def randomize(model: nn.Module, seed: int) -> None:
    """Every tensor random (so a misplaced bias or norm shows), in float16 values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(4242)
                continue
            noise = torch.randn(t.shape, generator=g)
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith("running_var"):
                value = 0.5 + torch.rand(t.shape, generator=g)
            elif t.ndim >= 2 and leaf == "weight" and "embeddings" not in name:
                value = noise / np.sqrt(np.prod(t.shape[1:]))  # Linear / conv: fan-in scale.
            elif leaf == "weight" and t.ndim == 1:
                value = 1 + 0.2 * noise  # LayerNorm / BatchNorm scale.
            elif leaf in ("bias", "running_mean"):
                value = 0.2 * noise
            else:
                value = noise  # Latents, position tables, paddings, embeddings.
            t.copy_(value.half().float())


def undo_deviations(model: nn.Module, name: str, config: PerceiverConfig) -> nn.Module:
    """A copy of `model` computing what DeepMind's reference (and ours) computes."""
    spec_cls = SPECS[name][0]
    tanh_config = copy.deepcopy(config)
    tanh_config.hidden_act = TANH_GELU
    undone = spec_cls(tanh_config).eval()
    undone.load_state_dict(model.state_dict())
    if name == "learned":  # The reference's decoder has no query residual.
        undone.perceiver.decoder.decoder.decoding_cross_attention.attention.use_query_residual = (
            False
        )
    if name == "conv":  # TF SAME: conv pads (2, 3); the pool pads (0, 1) and gives 56, not 55.
        convnet = undone.perceiver.input_preprocessor.convnet
        convnet.conv.zero_pad_2d = nn.ZeroPad2d((2, 3, 2, 3))
        convnet.max_pool = nn.Sequential(
            nn.ConstantPad2d((0, 1, 0, 1), float("-inf")), nn.MaxPool2d(3, 2)
        )
    return undone


def patches_for_flow(frames: np.ndarray) -> np.ndarray:
    """`[B, 2, H, W, 3]` -> transformers' flow input `[B, 2, 27, H, W]` (3x3 patches, row-col-c)."""
    b, t, h, w, c = frames.shape
    padded = np.pad(frames, [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)])
    patches = np.stack(
        [padded[:, :, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=-2
    ).reshape(b, t, h, w, 9 * c)
    return np.ascontiguousarray(patches.transpose(0, 1, 4, 2, 3))


def quantized(rng: np.random.Generator, shape, low=-1.0, high=1.0) -> np.ndarray:
    """Uniform values on a grid of 1/8: exact in float16, small once compressed."""
    return (np.round(rng.uniform(low, high, shape) * 8) / 8).astype(np.float32)


def inputs_for(name: str, rng: np.random.Generator, config: PerceiverConfig):
    """`(npz arrays in our layout, a function running a transformers model on them)`."""
    t = torch.from_numpy
    if name in ("mlm", "text"):
        tokens = rng.integers(0, 262, (2, config.max_position_embeddings)).astype(np.int32)
        mask = np.ones_like(tokens)
        mask[1, 11:] = 0  # Padding in the second row.
        arrays = dict(inputs=tokens, input_mask=mask)

        def run(model):
            out = model(inputs=t(tokens).long(), attention_mask=t(mask).float())
            return dict(logits=out.logits)

    elif name in ("learned", "fourier", "conv"):
        size = config.image_size if name == "learned" else 224
        batch = 2 if name == "learned" else 1
        images = quantized(rng, (batch, size, size, 3))
        arrays = dict(images=images)

        def run(model):
            return dict(logits=model(inputs=t(images).permute(0, 3, 1, 2)).logits)

    elif name == "flow":
        frames = quantized(rng, (2, 2) + tuple(config.train_size) + (3,))
        arrays = dict(images=frames)

        def run(model):
            return dict(flow=model(inputs=t(patches_for_flow(frames))).logits)

    else:
        frames, size = config.num_frames, config.output_shape[2]
        images = quantized(rng, (1, frames, size, size, 3), 0.0, 1.0)
        audio = quantized(rng, (1, frames * config.audio_samples_per_frame, 1))
        n_audio = frames * config.audio_samples_per_frame // config.samples_per_patch
        sub_image = np.sort(rng.permutation(frames * size * size)[:40]).astype(np.int32)
        sub_audio = np.arange(n_audio, dtype=np.int32)
        arrays = dict(
            images=images, audio=audio, subsample_image=sub_image, subsample_audio=sub_audio
        )

        def run(model):
            inputs = dict(
                image=t(images).permute(0, 1, 4, 2, 3),
                audio=t(audio),
                label=torch.zeros((1, config.num_labels)),
            )
            points = dict(image=t(sub_image).long(), audio=t(sub_audio).long(), label=None)
            out = model(inputs=inputs, subsampled_output_points=points).logits
            return {k: out[k] for k in ("image", "audio", "label")}

    return arrays, run


def make(name: str, out_dir: str, seed: int) -> None:
    cls, config, dtype, also_bin = SPECS[name]
    torch.manual_seed(seed)
    model = cls(copy.deepcopy(config)).eval()
    randomize(model, seed)
    arrays, run = inputs_for(name, np.random.default_rng(seed), config)
    with torch.no_grad():
        for prefix, m in (("hf", model), ("undone", undo_deviations(model, name, config))):
            for key, value in run(m).items():
                arrays[f"{prefix}_{key}"] = value.detach().numpy().astype(np.float32)
    folder = os.path.join(out_dir, name)
    shutil.rmtree(folder, ignore_errors=True)
    saved = model.to(dtype)
    saved.save_pretrained(folder)
    if also_bin:
        saved.save_pretrained(folder, safe_serialization=False)
    np.savez_compressed(os.path.join(folder, "io.npz"), **arrays)
    sizes = {f: os.path.getsize(os.path.join(folder, f)) for f in sorted(os.listdir(folder))}
    print(name, sizes)


def make_state_dict_bin(out_dir: str) -> None:
    """`torch_state_dict.bin`: a plain `torch.save(module.state_dict())`, whose OrderedDict
    carries torch's `_metadata` attribute (set by a pickle BUILD), unlike save_pretrained's."""
    module = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    with torch.no_grad():
        for i, t in enumerate(module.state_dict().values()):
            t.copy_(torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape) + 10 * i)
    torch.save(module.state_dict(), os.path.join(out_dir, "torch_state_dict.bin"))


# Published checkpoint -> the fixture name of its architecture.
PUBLISHED = {
    "mlm": "mlm",
    "imagenet_learned": "learned",
    "imagenet_fourier": "fourier",
    "imagenet_conv": "conv",
    "flow": "flow",
    "video_autoencoding": "video",
}


def _published_inputs(name: str, rng: np.random.Generator, config: PerceiverConfig):
    """Batch-1 inputs at a published model's sizes: `(our args, transformers kwargs, real)`."""
    t = torch.from_numpy
    if name == "mlm":
        length = config.max_position_embeddings
        tokens = rng.integers(0, 262, (1, length)).astype(np.int32)
        mask = np.ones_like(tokens)
        mask[:, 3 * length // 4 :] = 0  # A quarter padding.
        kwargs = dict(inputs=t(tokens).long(), attention_mask=t(mask).float())
        return (tokens, mask), kwargs, mask.astype(bool)
    if name == "flow":
        frames = quantized(rng, (1, 2) + tuple(config.train_size) + (3,))
        return (frames,), dict(inputs=t(patches_for_flow(frames))), None
    images = quantized(rng, (1, 224, 224, 3))
    return (images,), dict(inputs=t(images).permute(0, 3, 1, 2)), None


def measure(names, seed: int = 0) -> None:
    """Prints how far transformers' outputs are from ours at the published sizes.

    For each published model: a transformers model of its sizes with random
    weights (`randomize`) and the published configs' erf GELU, read by
    `convert.from_hf`; then ours written back by `convert.to_hf` (tanh GELU,
    folded decoder query) and loaded with `from_pretrained`. Each line gives
    max|ours - theirs| / max|theirs| (batch 1, float32, CPU), on real
    positions for the MLM (and on its padded ones apart).
    """
    import tempfile

    import jax

    from perceiver import convert, hub

    torch.set_grad_enabled(False)
    for name in names:
        short = PUBLISHED[name]
        entry = hub.get(name)
        sizes = dict(entry.factory_kwargs)
        ours_config = convert.hf_config(entry.factory, sizes, allow_deviations=True)
        # As transformers' published configs: the erf GELU, the query as it is.
        published = dict(ours_config, hidden_act="gelu")
        published.pop(convert.FOLDED_QUERY_FIELD, None)
        config = PerceiverConfig(**published)
        cls = getattr(transformers, published["architectures"][0])
        theirs = cls(copy.deepcopy(config)).eval()
        randomize(theirs, seed)
        ours_args, hf_kwargs, real = _published_inputs(short, np.random.default_rng(seed), config)
        with tempfile.TemporaryDirectory() as tmp:
            theirs.save_pretrained(os.path.join(tmp, "hf"))
            model, params, state = convert.from_hf(os.path.join(tmp, "hf"))
            ours = np.asarray(jax.jit(model.apply)(params, state, None, *ours_args)[0])
            if short == "flow":
                ours = ours / 20.0  # models.FLOW_OUTPUT_SCALE
            factory, kwargs = convert.hf_factory(published)
            convert.to_hf(
                params, state, factory, kwargs, os.path.join(tmp, "out"), allow_deviations=True
            )
            exported = cls.from_pretrained(os.path.join(tmp, "out")).eval()
            outputs = {
                "transformers' own (erf GELU, as published)": theirs,
                "deviations undone (fixture script)": undo_deviations(theirs, short, config),
                "written by to_hf": exported,
            }
            for what, hf_model in outputs.items():
                out = hf_model(**hf_kwargs).logits.numpy()
                diff = np.abs(ours - out)
                scale = np.max(np.abs(out if real is None else out[real]))
                line = f"{name:17s} {what:44s} {np.max(diff if real is None else diff[real]) / scale:.1e}"
                if real is not None:
                    line += f"  (padded positions: {np.max(diff[~real]) / scale:.1e})"
                print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "data", "hf"))
    parser.add_argument("--only", nargs="*", choices=sorted(SPECS), help="architectures to make")
    parser.add_argument(
        "--measure",
        nargs="+",
        choices=sorted(PUBLISHED),
        help="instead: measure transformers against ours at these published models' sizes",
    )
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    for seed, name in enumerate(sorted(SPECS)):
        if not args.only or name in args.only:
            make(name, args.out, seed)
    if not args.only:
        make_state_dict_bin(args.out)


if __name__ == "__main__":
    main()
