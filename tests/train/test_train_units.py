"""Training library: losses, optimiser pieces, configs, data, synthetic flow."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("orbax.checkpoint")

from perceiver import checkpoint, models  # noqa: E402
from perceiver.train import augment, config, data, finetune, losses, optim  # noqa: E402
from perceiver.train import recipes, synthetic_flow, text_data  # noqa: E402

# ---------------------------------------------------------------------------
# Losses against numpy
# ---------------------------------------------------------------------------


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_classification_loss_with_label_smoothing_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5)).astype(np.float32)
    labels = np.array([0, 3, 4, 1])
    eps = 0.1
    targets = np.eye(5)[labels] * (1 - eps) + eps / 5
    want = -(targets * _np_log_softmax(logits)).sum(-1).mean()
    got = losses.classification_loss(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=eps)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_classification_loss_mixes_labels_before_smoothing():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 4)).astype(np.float32)
    labels, mix, ratio = np.array([0, 1, 2]), np.array([3, 1, 0]), np.array([0.7, 0.2, 1.0])
    mixed = ratio[:, None] * np.eye(4)[labels] + (1 - ratio[:, None]) * np.eye(4)[mix]
    targets = mixed * 0.8 + 0.2 / 4
    want = -(targets * _np_log_softmax(logits)).sum(-1).mean()
    got = losses.classification_loss(
        jnp.asarray(logits), jnp.asarray(labels), label_smoothing=0.2,
        mix_labels=jnp.asarray(mix), ratio=jnp.asarray(ratio, jnp.float32),
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_label_smoothing_out_of_range_raises():
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.smooth_labels(jnp.eye(3), 1.0)


def test_topk_correct_matches_numpy_ranks():
    logits = jnp.array([[0.1, 0.5, 0.2, 0.9], [3.0, 1.0, 2.0, 0.0]])
    labels = jnp.array([1, 2])
    got = losses.topk_correct(logits, labels, (1, 2))
    np.testing.assert_array_equal(got["top_1_acc"], [0.0, 0.0])
    np.testing.assert_array_equal(got["top_2_acc"], [1.0, 1.0])


def test_masked_lm_loss_is_mean_over_masked_positions_only():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 6, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (2, 6))
    weights = np.zeros((2, 6), np.float32)
    weights[0, [1, 4]] = 1
    weights[1, 5] = 1
    nll = -np.take_along_axis(_np_log_softmax(logits), targets[..., None], -1)[..., 0]
    want = (nll * weights).sum() / weights.sum()
    want_acc = ((logits.argmax(-1) == targets) * weights).sum() / weights.sum()
    loss, acc = losses.masked_lm_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    np.testing.assert_allclose(acc, want_acc, rtol=1e-6)
    # Changing logits at unmasked positions changes nothing.
    logits2 = logits.copy()
    logits2[0, 0] += 5
    loss2, _ = losses.masked_lm_loss(jnp.asarray(logits2), jnp.asarray(targets), jnp.asarray(weights))
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)


def test_endpoint_error_matches_numpy_with_and_without_mask():
    rng = np.random.default_rng(3)
    pred, gt = rng.normal(size=(2, 3, 4, 2)), rng.normal(size=(2, 3, 4, 2))
    valid = rng.uniform(size=(2, 3, 4)) > 0.4
    epe = np.sqrt(((pred - gt) ** 2).sum(-1))
    np.testing.assert_allclose(losses.endpoint_error(jnp.asarray(pred), jnp.asarray(gt)), epe.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        losses.endpoint_error(jnp.asarray(pred), jnp.asarray(gt), jnp.asarray(valid)),
        epe[valid].mean(), rtol=1e-5,
    )
    grad = jax.grad(lambda p: losses.endpoint_error(p, p))(jnp.asarray(pred, jnp.float32))
    assert np.all(np.isfinite(grad))  # finite at zero error


def test_multimodal_autoencoding_loss_weights_each_modality():
    rng = np.random.default_rng(4)
    out = {"image": rng.normal(size=(2, 5, 3)), "audio": rng.normal(size=(2, 8)), "label": rng.normal(size=(2, 4))}
    tgt = {"image": rng.normal(size=(2, 5, 3)), "audio": rng.normal(size=(2, 8)), "label": np.array([1, 3])}
    weights = {"image": 0.03, "audio": 1.0, "label": 1e-4}
    image = np.abs(out["image"] - tgt["image"]).mean()
    audio = np.abs(out["audio"] - tgt["audio"]).mean()
    label = -np.take_along_axis(_np_log_softmax(out["label"]), tgt["label"][:, None], -1).mean()
    total, parts = losses.multimodal_autoencoding_loss(
        jax.tree_util.tree_map(jnp.asarray, out), jax.tree_util.tree_map(jnp.asarray, tgt), weights
    )
    np.testing.assert_allclose(parts["image"], image, rtol=1e-5)
    np.testing.assert_allclose(parts["label"], label, rtol=1e-5)
    np.testing.assert_allclose(total, 0.03 * image + audio + 1e-4 * label, rtol=1e-5)
    _, l2 = losses.multimodal_autoencoding_loss(out, tgt, weights, kinds={"audio": "l2"})
    np.testing.assert_allclose(l2["audio"], ((out["audio"] - tgt["audio"]) ** 2).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="same modalities"):
        losses.multimodal_autoencoding_loss(out, tgt, {"image": 1.0})


# ---------------------------------------------------------------------------
# Optimiser: weight-decay masks and schedules
# ---------------------------------------------------------------------------


def _small_conv_params():
    params, _ = models.parameter_shapes(
        "imagenet_classifier", variant="conv_preprocessing", num_classes=3, image_size=16,
        num_latents=4, num_latent_channels=8, num_blocks=1, num_self_attends_per_block=1,
        num_self_attend_heads=2, num_bands=2,
    )
    return params


def test_weight_decay_mask_excludes_biases_norms_and_position_embeddings():
    params = _small_conv_params()
    mask = optim.weight_decay_mask(params, decay_pos_embs=False)
    flat = {f"{m}/{n}": v for m, ps in mask.items() for n, v in ps.items()}
    assert flat["image_preprocessor/~/conv2_d_downsample/~/batchnorm/scale"] is False
    assert flat["image_preprocessor/~/conv2_d_downsample/~/batchnorm/offset"] is False
    assert flat["perceiver_encoder/~/cross_attention/layer_norm/scale"] is False
    assert flat["perceiver_encoder/~/trainable_position_encoding/pos_embs"] is False
    assert flat["classification_decoder/~/basic_decoder/output/b"] is False
    assert flat["classification_decoder/~/basic_decoder/output/w"] is True
    assert flat["image_preprocessor/~/conv2_d_downsample/~/conv/w"] is True
    for key, value in flat.items():
        name, module = key.rsplit("/", 1)[1], key.rsplit("/", 1)[0]
        excluded = name in ("b", "bias", "pos_embs") or "norm" in module
        assert value is (not excluded), key
    # The reference's default decays position embeddings; each flag turns its group on.
    assert optim.weight_decay_mask(params)["perceiver_encoder/~/trainable_position_encoding"]["pos_embs"]
    on = optim.weight_decay_mask(params, decay_biases=True, decay_norms=True, decay_pos_embs=True)
    assert all(v for ps in on.values() for v in ps.values())
    mlm = models.parameter_shapes("masked_language_model", max_seq_len=8, d_model=8, num_latents=2,
                                  num_latent_channels=8, num_self_attends=1, num_heads=2, qk_channels=4)[0]
    assert optim.weight_decay_mask(mlm)["embedding_decoder"]["bias"] is False


def test_optimizer_decays_only_masked_parameters():
    params = {"lin": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, "layer_norm": {"scale": jnp.ones(2)}}
    cfg = config.OptimizerSettings(optimizer="adamw", base_lr=0.1, scale_by_batch=False,
                                 weight_decay=0.5, max_norm=0, schedule="constant")
    opt, _ = optim.make_optimizer(cfg, total_steps=10, batch_size=8)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    np.testing.assert_allclose(updates["lin"]["w"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_array_equal(updates["lin"]["b"], 0)
    np.testing.assert_array_equal(updates["layer_norm"]["scale"], 0)


def test_gradient_clipping_by_global_norm_comes_first():
    kwargs = dict(optimizer="adamw", base_lr=0.1, scale_by_batch=False, weight_decay=0.0,
                  schedule="constant", eps=1e-8)
    clipped, _ = optim.make_optimizer(config.OptimizerSettings(max_norm=1.0, **kwargs), 10, 8)
    unclipped, _ = optim.make_optimizer(config.OptimizerSettings(max_norm=0.0, **kwargs), 10, 8)
    by_hand = optim.optax.chain(optim.optax.clip_by_global_norm(1.0),
                                optim.optax.adamw(0.1, eps=1e-8, weight_decay=0.0))
    params = {"m": {"w": jnp.zeros(2)}}
    # A huge gradient, then a small one: clipping changes how Adam weighs them.
    grads = [{"m": {"w": jnp.array([300.0, 400.0])}}, {"m": {"w": jnp.array([0.8, -0.6])}}]

    def second_update(opt):
        state = opt.init(params)
        for g in grads:
            updates, state = opt.update(g, state, params)
        return np.asarray(updates["m"]["w"])

    np.testing.assert_allclose(second_update(clipped), second_update(by_hand), rtol=1e-6)
    assert not np.allclose(second_update(clipped), second_update(unclipped), rtol=1e-3)


def test_train_step_draws_a_fresh_key_per_step_and_eval_none():
    from perceiver.train import trainer

    def loss_fn(params, state, key, batch):
        noise = jax.random.uniform(key)
        return jnp.sum(params["m"]["w"] * batch["x"]), ({"noise": noise}, state)

    opt, schedule = optim.make_optimizer(
        config.OptimizerSettings(optimizer="adamw", base_lr=0.1, scale_by_batch=False, schedule="constant"), 10, 2)
    params = {"m": {"w": jnp.ones(2)}}
    rng = jax.random.PRNGKey(3)
    ts = trainer.TrainState(jnp.zeros((), jnp.int32), params, {}, opt.init(params), rng)
    step = jax.jit(trainer.make_train_step(loss_fn, opt, schedule))
    noises = []
    for i in range(3):
        ts, m = step(ts, {"x": jnp.ones((2, 2))})
        # The key of step i is fold_in(rng, i): the same after a restart, on any number of devices.
        np.testing.assert_allclose(m["noise"], jax.random.uniform(jax.random.fold_in(rng, i)))
        noises.append(float(m["noise"]))
    assert len(set(noises)) == 3 and int(ts.step) == 3
    np.testing.assert_array_equal(ts.rng, rng)


def _schedule(**kwargs):
    base = dict(base_lr=1.0, scale_by_batch=False)
    base.update(kwargs)
    return optim.learning_rate_schedule(config.OptimizerSettings(**base), total_steps=100, batch_size=256)


def test_constant_cosine_schedule_values():
    f = _schedule(schedule="constant_cosine", constant_fraction=0.5, end_lr=0.0)
    assert float(f(0)) == 1.0 and float(f(49)) == 1.0
    np.testing.assert_allclose(f(50), 1.0, rtol=1e-6)
    np.testing.assert_allclose(f(75), 0.5, atol=1e-6)  # half-way through the cosine
    np.testing.assert_allclose(f(100), 0.0, atol=1e-6)


def test_cosine_warmup_schedule_values():
    f = _schedule(schedule="cosine", warmup_steps=10, init_lr=0.0, end_lr=0.1)
    np.testing.assert_allclose([f(0), f(5), f(10)], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(f(55), 0.1 + 0.9 * 0.5, atol=1e-6)
    np.testing.assert_allclose(f(100), 0.1, atol=1e-6)


def test_step_decay_schedule_and_batch_scaling():
    f = _schedule(schedule="steps", decay_boundaries=(0.5, 0.8), decay_rate=0.1)
    np.testing.assert_allclose([f(49), f(50), f(79), f(80), f(99)], [1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
    g = optim.learning_rate_schedule(config.OptimizerSettings(base_lr=5e-4, schedule="constant"), 10, 1024)
    np.testing.assert_allclose(g(3), 5e-4 * 1024 / 256, rtol=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        _schedule(schedule="linear")


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------


def test_overrides_parse_to_declared_types():
    cfg = recipes.get_config("flow", tiny=True)
    config.apply_overrides(cfg, [
        "optimizer.base_lr=3e-4", "train.batch_size=4", "checkpoint.async_save=false",
        "model.image_shape=(24,32)", "optimizer.decay_boundaries=(0.3,0.6)", "optimizer.optimizer=lamb",
        "data.max_objects=2",
    ])
    assert cfg.optimizer.base_lr == 3e-4 and cfg.train.batch_size == 4
    assert cfg.checkpoint.async_save is False and cfg.model["image_shape"] == (24, 32)
    assert cfg.optimizer.decay_boundaries == (0.3, 0.6) and cfg.optimizer.optimizer == "lamb"
    assert cfg.data.max_objects == 2
    json.loads(config.to_json(cfg))


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.batch_sise=4", "unknown config key 'train.batch_sise'"),
        ("train.batch_size=four", "train.batch_size must be an int"),
        ("train.batch_size=2.5", "train.batch_size must be an int"),
        ("checkpoint.async_save=maybe", "must be a bool"),
        ("optimizer=1", "is a section"),
        ("model.num_latents=abc", "model.num_latents must be an int"),
        ("train.batch_size", "KEY=VALUE"),
    ],
)
def test_bad_overrides_raise(item, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        config.apply_overrides(recipes.get_config("flow", tiny=True), [item])


def test_every_recipe_has_a_full_and_tiny_config():
    for name in recipes.CONFIGS:
        for tiny in (False, True):
            cfg = recipes.get_config(name, tiny)
            assert cfg.recipe in recipes.BUILDERS
    with pytest.raises(ValueError, match="unknown recipe"):
        recipes.get_config("nope")
    # The reference's ImageNet hyper-parameters.
    cfg = recipes.get_config("imagenet")
    o = cfg.optimizer
    assert (o.optimizer, o.base_lr, o.weight_decay, o.max_norm, o.schedule) == ("lamb", 5e-4, 0.1, 10.0, "constant_cosine")
    assert (cfg.train.epochs, cfg.task.label_smoothing, cfg.data.mixup_alpha, cfg.data.cutmix) == (110, 0.1, 0.2, True)
    assert (cfg.data.randaugment_layers, cfg.data.randaugment_magnitude) == (4, 5)


# ---------------------------------------------------------------------------
# Synthetic flow: the ground truth is exact
# ---------------------------------------------------------------------------


def _bilinear(image, points):
    h, w = image.shape[:2]
    x, y = points[:, 0], points[:, 1]
    x0, y0 = np.clip(np.floor(x).astype(int), 0, w - 2), np.clip(np.floor(y).astype(int), 0, h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    return ((1 - fx) * (1 - fy) * image[y0, x0] + fx * (1 - fy) * image[y0, x0 + 1]
            + (1 - fx) * fy * image[y0 + 1, x0] + fx * fy * image[y0 + 1, x0 + 1])


def test_synthetic_flow_is_exact_where_visible():
    spec = synthetic_flow.FlowSceneSpec(image_shape=(24, 32), max_objects=3)
    for index in range(3):
        rng = np.random.default_rng([5, index])
        layers = synthetic_flow.random_scene(spec, rng)
        example = synthetic_flow.make_pair(spec, 5, index)
        p = synthetic_flow.pixel_grid(spec.image_shape)
        flow = example["flow"].reshape(-1, 2).astype(np.float64)
        valid = example["valid"].ravel()
        assert 0.3 < valid.mean() < 1.0 or index  # some points leave or are covered
        # Frame 2 rendered at p + flow(p) is frame 1 at p, wherever the point stays visible.
        frame1 = example["frames"][0].reshape(-1, 3)
        warped = synthetic_flow.render(layers, p + flow, frame=2)
        np.testing.assert_allclose(warped[valid], frame1[valid], atol=1e-5)
        # Where it does not, frame 2 there shows something else.
        if (~valid).any():
            inside = ~valid & np.all((p + flow >= 0) & (p + flow <= [31, 23]), axis=1)
            if inside.any():
                assert np.abs(warped[inside] - frame1[inside]).max() > 1e-3


def test_synthetic_flow_pixel_warp_reproduces_frame_two():
    """Warping frame 2's pixels (bilinear) by the flow gives frame 1 where visible.

    Exact for integer translations; close for general motions (textures are
    smooth), and much closer than with no motion compensation.
    """
    spec = synthetic_flow.FlowSceneSpec(
        image_shape=(32, 32), min_objects=1, max_objects=1, max_rotation=0.0, max_log_scale=0.0,
        max_background_rotation=0.0, max_background_log_scale=0.0, max_frequency=0.1,
    )
    layers = synthetic_flow.random_scene(spec, np.random.default_rng(0))
    for layer, shift in zip(layers, ([2.0, -1.0], [-3.0, 2.0])):
        layer.matrix, layer.offset = np.eye(2), np.array(shift)
    p = synthetic_flow.pixel_grid(spec.image_shape)
    frame1, frame2 = (synthetic_flow.render(layers, p, f).reshape(32, 32, 3) for f in (1, 2))
    flow, valid = synthetic_flow.scene_flow(layers, spec.image_shape)
    flow = flow.reshape(-1, 2)
    # Bilinear sampling also needs the 4 neighbours on the same layer: away from edges.
    top2 = synthetic_flow.visible_layer(layers, p, 2).reshape(32, 32)
    q = p + flow
    x0, y0 = np.floor(q[:, 0]).astype(int).clip(0, 30), np.floor(q[:, 1]).astype(int).clip(0, 30)
    same = (top2[y0, x0] == top2[y0 + 1, x0 + 1]) & (top2[y0, x0 + 1] == top2[y0 + 1, x0])
    use = valid.ravel() & same
    np.testing.assert_allclose(_bilinear(frame2, q)[use], frame1.reshape(-1, 3)[use], atol=1e-6)

    example = synthetic_flow.make_pair(
        synthetic_flow.FlowSceneSpec(image_shape=(32, 32), max_frequency=0.08, max_translation=3.0), 0, 7
    )
    f1, f2 = example["frames"]
    flow, valid = example["flow"].reshape(-1, 2), example["valid"].ravel()
    interior = valid & np.all((p > 1) & (p < 30), axis=1)
    err_flow = np.abs(_bilinear(f2, p + flow) - f1.reshape(-1, 3))[interior].mean()
    err_zero = np.abs(f2.reshape(-1, 3) - f1.reshape(-1, 3))[interior].mean()
    assert err_flow < 0.25 * err_zero, (err_flow, err_zero)


def test_synthetic_pairs_are_reproducible():
    spec = synthetic_flow.FlowSceneSpec(image_shape=(8, 12))
    a, b = synthetic_flow.make_pair(spec, 1, 3), synthetic_flow.make_pair(spec, 1, 3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["frames"].shape == (2, 8, 12, 3) and a["flow"].shape == (8, 12, 2)
    assert not np.array_equal(a["frames"], synthetic_flow.make_pair(spec, 1, 4)["frames"])
    assert np.abs(a["frames"]).max() <= 1


# ---------------------------------------------------------------------------
# Data pipelines: deterministic and resumable
# ---------------------------------------------------------------------------


def _batches(loader, n, state=None):
    it = iter(loader)
    if state is not None:
        it.set_state(state)
    out = [next(it) for _ in range(n)]
    return out, it.get_state()


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_text_pipeline_order_is_deterministic_and_resumable(tmp_path):
    paths = text_data.write_generated_text(str(tmp_path), documents=40)
    source = text_data.ByteChunks([paths["corpus"]], seq_len=32)
    make = lambda seed: data.make_loader(source, [text_data.MaskTokens()], batch_size=4, seed=seed)
    first, _ = _batches(make(3), 6)
    again, _ = _batches(make(3), 6)
    _assert_same(first, again)  # same seed: same order and same masks
    other, _ = _batches(make(4), 6)
    assert not np.array_equal(first[0]["targets"], other[0]["targets"])
    head, state = _batches(make(3), 2)
    tail, _ = _batches(make(3), 4, state)  # a fresh loader continued from a saved state
    _assert_same(head + tail, first)


def test_prefetcher_state_is_that_after_the_consumed_batch():
    spec = synthetic_flow.FlowSceneSpec(image_shape=(4, 4))
    source = synthetic_flow.SyntheticFlowSource(spec, num_records=50, seed=0)
    loader = data.make_loader(source, [], batch_size=2, seed=0)
    p = data.Prefetcher(loader, buffer=3)
    got = [next(p) for _ in range(3)]
    state = p.state
    p.close()
    resumed = data.Prefetcher(loader, state)
    rest = [next(resumed) for _ in range(2)]
    resumed.close()
    full, _ = _batches(loader, 5)
    _assert_same(got + rest, full)


def test_image_pipeline_with_mixing_is_deterministic_and_resumable(tmp_path):
    from perceiver.train import images

    root = images.write_generated_folder(str(tmp_path / "imgs"), num_classes=2, images_per_class=6, size=24)
    source = images.ImageFolder(root)
    assert source.classes == ["class_00", "class_01"] and len(source) == 12

    def make():
        return data.make_loader(
            source, [images.TrainImageTransform(16, 2, 5.0)], batch_size=2, seed=1,
            batch_operations=[images.MixTransform(0.2, True)], pre_batch=4,
        )

    first, _ = _batches(make(), 4)
    assert first[0]["images"].shape == (2, 16, 16, 3) and set(first[0]) == {"images", "labels", "mix_labels", "ratio"}
    again, _ = _batches(make(), 4)
    _assert_same(first, again)
    head, state = _batches(make(), 1)
    tail, _ = _batches(make(), 3, state)
    _assert_same(head + tail, first)
    ev = data.make_loader(source, [images.EvalImageTransform(16)], batch_size=5, seed=0, shuffle=False,
                          num_epochs=1, drop_remainder=False)
    sizes = [len(b["labels"]) for b in ev]
    assert sizes == [5, 5, 2]
    padded, n = data.pad_batch(next(iter(ev)), 8)
    assert n == 5 and padded["example_weights"].tolist() == [1] * 5 + [0] * 3


def test_training_images_are_read_upright_as_at_inference(tmp_path):
    # A camera's portrait photo: stored sideways, with the EXIF tag that turns it.
    from PIL import Image

    from perceiver import media
    from perceiver.train import images

    skimage_data = pytest.importorskip("skimage.data")
    photo = skimage_data.chelsea()  # [300, 451, 3]
    exif = Image.Exif()
    exif[0x0112] = 8  # Turn 90 degrees counter-clockwise to view.
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    path = tmp_path / "imgs" / "cat" / "side.png"
    Image.fromarray(np.rot90(photo, -1)).save(path, exif=exif)
    np.testing.assert_array_equal(np.asarray(images.load_rgb(str(path))), photo)
    np.testing.assert_array_equal(media.read_image(path), photo)


def test_span_masking_counts_and_replacements():
    rng = np.random.default_rng(0)
    mask = text_data.span_mask(rng, 200, mask_prob=0.15, mean_span=3.0, max_span=10)
    assert mask.sum() == 30
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, mask.astype(int), 0])))[::2]
    assert runs.max() > 1  # spans, not single bytes
    tokens = text_data.TOKENIZER.to_int("hello world, this is a test of masking " * 20)[:512]
    pad = np.r_[np.ones(500), np.zeros(12)].astype(np.int32)
    out = text_data.mask_tokens(tokens, pad, np.random.default_rng(1))
    chosen = out["weights"] > 0
    assert chosen[500:].sum() == 0 and chosen.sum() == 75
    masked = out["inputs"] == text_data.TOKENIZER.mask_token
    assert masked[chosen].mean() > 0.6 and not masked[~chosen].any()
    np.testing.assert_array_equal(out["inputs"][~chosen], tokens[~chosen])


def test_mix_batch_follows_the_reference():
    rng = np.random.default_rng(0)
    batch = {"images": rng.uniform(size=(8, 6, 6, 3)).astype(np.float32), "labels": np.arange(8)}
    out = augment.mix_batch(batch, np.random.default_rng(1), mixup_alpha=0.2, cutmix=True)
    assert out["images"].shape == (4, 6, 6, 3)
    np.testing.assert_array_equal(out["labels"], [0, 1, 2, 3])
    np.testing.assert_array_equal(out["mix_labels"], [4, 5, 6, 7])
    a, b = batch["images"][:4], batch["images"][4:]
    for i in range(2):  # MixUp: a convex combination with the ratio
        r = out["ratio"][i]
        np.testing.assert_allclose(out["images"][i], r * a[i] + (1 - r) * b[i], rtol=1e-5)
    for i in range(2, 4):  # CutMix: pixels of a inside the box, ratio = its area share
        from_a = np.all(np.isclose(out["images"][i], a[i]), axis=-1)
        from_b = np.all(np.isclose(out["images"][i], b[i]), axis=-1)
        assert np.all(from_a | from_b)
        np.testing.assert_allclose(out["ratio"][i], from_a.mean(), atol=1e-6)


def test_randaugment_ops_keep_shape_and_are_deterministic():
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8))
    for name, op in augment.RANDAUGMENT_OPS.items():
        out = op(image, np.random.default_rng(1), 5.0)
        assert out.size == image.size and out.mode == "RGB", name
    a = np.asarray(augment.randaugment(image, np.random.default_rng(3), 4, 5))
    b = np.asarray(augment.randaugment(image, np.random.default_rng(3), 4, 5))
    np.testing.assert_array_equal(a, b)
    top, left, h, w = augment.random_resized_crop_box(np.random.default_rng(0), 100, 80)
    assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 80
    assert augment.center_crop_box(256, 320, 224) == (16, 48, 224, 224)


# ---------------------------------------------------------------------------
# Fine-tuning: pretrained weights with a new head
# ---------------------------------------------------------------------------


def test_merge_pretrained_drops_the_head_and_checks_the_rest():
    init = {"enc": {"w": np.zeros((2, 3))}, "head/out": {"w": np.zeros((3, 5)), "b": np.zeros(5)}}
    ckpt = {"enc": {"w": np.ones((2, 3))}, "head/out": {"w": np.ones((3, 9)), "b": np.ones(9)},
            "old_decoder": {"w": np.ones(4)}}
    merged, loaded, dropped = finetune.merge_pretrained(init, ckpt, fresh=("head",))
    np.testing.assert_array_equal(merged["enc"]["w"], 1)
    np.testing.assert_array_equal(merged["head/out"]["w"], 0)
    assert loaded == ["enc"] and dropped == ["head/out", "old_decoder"]
    with pytest.raises(checkpoint.CheckpointError, match="mismatched head/out/w"):
        finetune.merge_pretrained(init, ckpt, fresh=())
    with pytest.raises(checkpoint.CheckpointError, match="missing enc"):
        finetune.merge_pretrained(init, {"head/out": ckpt["head/out"]}, fresh=("head",))


def test_text_classifier_shares_the_mlm_encoder_tree():
    sizes = dict(max_seq_len=16, d_model=8, num_latents=4, num_latent_channels=16,
                 num_self_attends=1, num_heads=2, qk_channels=8)
    mlm, _ = models.parameter_shapes("masked_language_model", **sizes)
    model = finetune.text_classifier(3, **sizes)
    tokens = jnp.zeros((2, 10), jnp.int32)
    # Shapes only (eval_shape compiles nothing); the recipe tests run the model.
    params, state = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens, is_training=True))
    shared = {m for m in params if not m.startswith("classification_decoder")}
    assert shared and shared <= set(mlm)
    for m in shared:
        assert {n: v.shape for n, v in params[m].items()} == {n: v.shape for n, v in mlm[m].items()}
    logits, _ = jax.eval_shape(lambda p, s: model.apply(p, s, None, tokens, tokens), params, state)
    assert logits.shape == (2, 3)


def test_distributed_start_only_when_the_environment_says_so():
    from perceiver.train import parallel

    assert not parallel.multi_process_environment({})
    assert not parallel.multi_process_environment({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"})
    assert parallel.multi_process_environment({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"})
    assert parallel.multi_process_environment({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert parallel.multi_process_environment({"OMPI_COMM_WORLD_SIZE": "2"})
    assert parallel.multi_process_environment({"TPU_WORKER_HOSTNAMES": "a,b"})
    assert not parallel.multi_process_environment({"TPU_WORKER_HOSTNAMES": "a"})
    assert parallel.maybe_initialize_distributed("off") is False
    assert parallel.maybe_initialize_distributed("auto") is (parallel.multi_process_environment())
    with pytest.raises(ValueError, match="mesh.distributed"):
        parallel.maybe_initialize_distributed("sometimes")


def test_published_checkpoints_fine_tune_cleanly():
    """The recorded trees of the published models load into the fine-tuning models."""
    import pathlib

    recorded = pathlib.Path(__file__).resolve().parents[1] / "data" / "reference" / "param_trees.json"
    trees = json.loads(recorded.read_text())

    def fake(tree):  # zero-stride arrays of the right shapes: no memory
        return {m: {n: np.broadcast_to(np.float32(0), tuple(getattr(s, "shape", s))) for n, s in ps.items()}
                for m, ps in tree.items()}

    image_head = recipes.get_config("finetune_image").task.new_modules
    new, _ = models.parameter_shapes("imagenet_classifier", variant="fourier_position_encoding", num_classes=10)
    _, loaded, dropped = finetune.merge_pretrained(
        fake(new), fake(trees["imagenet_fourier"]["full"]["params"]), fresh=image_head)
    assert dropped == ["classification_decoder/~/basic_decoder/output"] and len(loaded) == len(new) - 1

    text_new = recipes.get_config("finetune_text").task.new_modules
    model = finetune.text_classifier(2)
    tokens = jnp.zeros((1, 2048), jnp.int32)
    new, _ = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens, is_training=True))
    _, loaded, dropped = finetune.merge_pretrained(
        fake(new), fake(trees["mlm"]["full"]["params"]), fresh=text_new)
    assert {d.split("/")[0] for d in dropped} == {"basic_decoder", "embedding_decoder"}
    assert {m.split("/")[0] for m in loaded} == {"embed", "trainable_position_encoding", "perceiver_encoder"}


class _Records:
    """Record i is {'x': i}: which records a batch holds is visible in it."""

    def __len__(self):
        return 23

    def __getitem__(self, i):
        return {"x": np.int64(i)}

    def __repr__(self):
        return "_Records()"


@pytest.mark.parametrize("shuffle,num_epochs,drop", [(True, None, True), (False, 1, False), (True, 1, False)])
def test_processes_read_contiguous_rows_of_the_same_global_batches(monkeypatch, shuffle, num_epochs, drop):
    def loader(index, count, per_process):
        monkeypatch.setattr(jax, "process_index", lambda: index)
        monkeypatch.setattr(jax, "process_count", lambda: count)
        made = data.make_loader(
            _Records(), [], batch_size=per_process, seed=5, shuffle=shuffle,
            num_epochs=num_epochs, drop_remainder=drop,
        )
        return [b["x"].tolist() for b in itertools.islice(iter(made), 8)]

    single = loader(0, 1, 6)
    shares = [loader(k, 3, 2) for k in range(3)]
    assert [len(s) for s in shares] == [len(single)] * 3
    for i, whole in enumerate(single):
        joined = sum((s[i] for s in shares), [])
        if len(whole) == 6:  # a full batch: the same records in the same order
            assert joined == whole
        else:  # the last partial batch: trimmed to a multiple of 3, split evenly
            assert joined == whole[: len(whole) - len(whole) % 3]
            assert len({len(s[i]) for s in shares}) == 1
    if not shuffle:
        assert single[0] == list(range(6)) and single[-1] == [18, 19, 20, 21, 22]
