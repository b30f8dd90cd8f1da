"""The training loop shared by every recipe: state, jit-compiled steps, checkpoints.

A recipe supplies an `Objective` (what it optimises: model init, loss,
evaluation, data); `train` does the rest the same way on one CPU, many GPUs
or a TPU pod:

- the `TrainState` (params, model state, optimiser state, step, key) lives
  on a device mesh, replicated or sharded (`parallel`);
- `make_train_step` is one jit-compiled function of the global batch;
  dropout keys are `fold_in(key, step)`, so they do not depend on the number
  of devices or on restarts;
- checkpoints (with the data iterator's state) are saved every
  `checkpoint.every_steps`; running the same command again resumes from the
  latest one and ends with the same parameters as a run never stopped;
- Ctrl-C (or SIGTERM) saves the state of the last whole step with its data
  position, then stops (never mid-step: see `_interrupt.held`);
- a run resumed with another length (`train.num_steps`) keeps its learning
  rate continuous (`optim.continued_schedule`; the lengths it was run with
  are in WORKDIR/schedule.json), and a finished run rerun does nothing.
"""

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from perceiver import _interrupt
from perceiver import checkpoint as inference_checkpoint
from perceiver.train import checkpointing
from perceiver.train import config as config_lib
from perceiver.train import data as data_lib
from perceiver.train import metrics as metrics_lib
from perceiver.train import optim
from perceiver.train import parallel

# loss(params, model_state, key, batch) -> (loss, (metrics, new_model_state))
LossFn = Callable[[Any, Any, jax.Array, Mapping[str, jax.Array]], Tuple[jax.Array, Tuple[dict, Any]]]
# evaluate(params, model_state, batch) -> {name: (sum, count)} over the batch's real examples
EvalFn = Callable[[Any, Any, Mapping[str, jax.Array]], Mapping[str, Tuple[jax.Array, jax.Array]]]


# Raised when a run diverges (see `train`).
NonFiniteError = checkpointing.NonFiniteError


def _global_norm(tree) -> jax.Array:
    tree_lib = getattr(optax, "tree", None)  # optax >= 0.2.4; global_norm is deprecated there
    return tree_lib.norm(tree) if tree_lib is not None else optax.global_norm(tree)


class TrainState(NamedTuple):
    """Everything a run needs to continue exactly where it stopped."""

    step: jax.Array  # int32 scalar: updates applied so far
    params: Any
    state: Any  # Haiku model state (e.g. BatchNorm statistics)
    opt_state: Any
    rng: jax.Array  # uint32 [2]: base key; step keys are fold_in(rng, step)


@dataclasses.dataclass
class Objective:
    """What a recipe optimises, and on what data: its part of the generic loop.

    Attributes:
      init: key -> (params, model_state), freshly initialised.
      loss: see `LossFn`; called with is_training semantics (dropout on).
      evaluate: see `EvalFn`, or None; batches carry `example_weights`
        (0 for padding rows).
      train_loader: (batch size of this process, seed) -> endless grain loader.
      eval_loader: batch size of this process -> one-epoch loader, or None.
      num_train_examples: examples per epoch (for `train.epochs`), or None.
      load_pretrained: (params, state) -> (params, state) with published
        weights merged in, or None.
      export_info: facts written to summary.json about the exported model
        (e.g. the factory and its sizes).
      eval_counts: evaluation results that are counts, not means:
        `{reported name: metric}` reports the number of items `metric` was
        averaged over (e.g. `{"masked_tokens": "loss"}`). `examples`, the
        number of examples evaluated, is always reported.
      describe: step -> the description written beside an exported
        checkpoint (see `perceiver.checkpoint.save_description`), or None.
    """

    init: Callable[[jax.Array], Tuple[Any, Any]]
    loss: LossFn
    train_loader: Callable[[int, int], Any]
    evaluate: Optional[EvalFn] = None
    eval_loader: Optional[Callable[[int], Any]] = None
    num_train_examples: Optional[int] = None
    load_pretrained: Optional[Callable[[Any, Any], Tuple[Any, Any]]] = None
    export_info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    eval_counts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    describe: Optional[Callable[[int], Mapping[str, Any]]] = None


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, schedule: optax.Schedule):
    """`step(train_state, batch) -> (train_state, metrics)`, not yet compiled.

    Written for the global batch: under `jit` with a sharded batch the
    gradient mean over devices is inserted by the compiler.
    """

    def step(ts: TrainState, batch):
        key = jax.random.fold_in(ts.rng, ts.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (metrics, model_state)), grads = grad_fn(ts.params, ts.state, key, batch)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        metrics = dict(metrics)
        metrics.update(loss=loss, grad_norm=_global_norm(grads), learning_rate=schedule(ts.step))
        return TrainState(ts.step + 1, params, model_state, opt_state, ts.rng), metrics

    return step


def compile_train_step(step_fn, state_shardings, mesh, donate: bool = True):
    """`jax.jit` of a train step with the state's and the batch's shardings."""
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )


def compile_eval_step(eval_fn: EvalFn, params_shardings, state_shardings, mesh):
    """`jax.jit` of `(params, state, batch) -> (eval_fn's sums, number of real examples)`."""

    def step(params, state, batch):
        return eval_fn(params, state, batch), jnp.sum(batch["example_weights"])

    return jax.jit(
        step,
        in_shardings=(params_shardings, state_shardings, parallel.batch_sharding(mesh)),
        out_shardings=parallel.replicated(mesh),
    )


def initial_state(objective: Objective, optimizer, seed: int) -> Callable[[], TrainState]:
    """A function building the step-0 state (to trace shapes or run under jit)."""

    def build():
        init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
        params, model_state = objective.init(init_key)
        return TrainState(
            jnp.zeros((), jnp.int32), params, model_state, optimizer.init(params), train_key
        )

    return build


def total_steps(config: config_lib.Config, objective: Objective) -> int:
    """`train.num_steps`, or `train.epochs` over the training set.

    Raises:
      ValueError: when neither gives a positive number of steps.
    """
    if config.train.num_steps > 0:
        return config.train.num_steps
    if config.train.epochs > 0 and objective.num_train_examples:
        epochs, examples = config.train.epochs, objective.num_train_examples
        return max(1, math.ceil(epochs * examples / config.train.batch_size))
    raise ValueError(
        "set train.num_steps (> 0), or train.epochs (> 0) for a data set of known size; got "
        f"num_steps={config.train.num_steps}, epochs={config.train.epochs}."
    )


def evaluate(
    objective: Objective, eval_step, ts: TrainState, batch_size: int, mesh, max_batches: int = 0
) -> Dict[str, float]:
    """Means of the objective's evaluation metrics over the evaluation set.

    Also `examples` (how many were evaluated) and the objective's `eval_counts`.
    """
    per_process = batch_size // jax.process_count()
    sharding = parallel.batch_sharding(mesh)
    sums: Dict[str, np.ndarray] = {}
    examples = 0.0
    batches = iter(objective.eval_loader(per_process))
    try:
        for i, host_batch in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            padded, _ = data_lib.pad_batch(host_batch, per_process)
            out, count = jax.device_get(
                eval_step(ts.params, ts.state, data_lib.to_global(padded, sharding))
            )
            examples += float(count)
            for name, (total, n) in out.items():
                prev = sums.get(name, np.zeros(2))
                sums[name] = prev + np.array([float(total), float(n)])
    finally:
        if hasattr(batches, "close"):
            batches.close()  # stop the workers of a loader left early
    result = {name: total / max(n, 1e-12) for name, (total, n) in sums.items()}
    for name, metric in objective.eval_counts.items():
        if metric in sums:
            result[name] = float(sums[metric][1])
    result["examples"] = examples
    return result


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def _progress(total: int, initial: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return None
    show = enabled and jax.process_index() == 0 and sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not show, dynamic_ncols=True, unit="step")


def _write_json(path: str, text: str) -> None:
    """Writes `text` to `path` atomically, on process 0."""
    if jax.process_index() == 0:
        tmp = path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        finally:  # a failure or Ctrl-C leaves neither a partial file nor the temporary one
            if os.path.exists(tmp):
                os.remove(tmp)


def _write_config(config: config_lib.Config, workdir: str, overwrite: bool) -> None:
    """WORKDIR/config.json (see `runconfig`); an existing one only with `overwrite`."""
    path = os.path.join(workdir, "config.json")
    if overwrite or not os.path.exists(path):
        _write_json(path, config_lib.to_json(config) + "\n")


SCHEDULE_FILE = "schedule.json"


def schedule_segments(workdir: str, start: int, num_steps: int) -> List[Tuple[int, int]]:
    """The `(start step, total steps)` lengths of a run resumed at `start` for `num_steps`.

    Read from WORKDIR/schedule.json: lengths set at steps before `start` are
    kept (their steps are in the checkpoint); a new total adds `(start,
    num_steps)` (see `optim.continued_schedule`). A workdir without the file
    is taken to have run for `num_steps` from the start.
    """
    path = os.path.join(workdir, SCHEDULE_FILE)
    segments: List[Tuple[int, int]] = []
    if os.path.exists(path):
        with open(path) as f:
            segments = [(int(a), int(b)) for a, b in json.load(f)["segments"]]
    segments = [seg for seg in segments if seg[0] < start or seg[0] == 0]
    if not segments or start == 0:
        return [(0, num_steps)]
    if segments[-1][1] != num_steps:
        segments.append((start, num_steps))
    return segments


def check_length(workdir: str, num_steps: int) -> None:
    """Raises ValueError if `workdir`'s checkpoints are of a step beyond `num_steps`."""
    saved = checkpointing.saved_steps(os.path.join(workdir, "checkpoints"))
    if saved and max(saved) > num_steps:
        raise ValueError(
            f"train.num_steps must be >= {max(saved)}, the step {workdir}/checkpoints already "
            f"holds; got {num_steps}. Raise it, or give another --workdir."
        )


def finished_step(workdir: str, num_steps: int) -> Optional[int]:
    """`num_steps` if `workdir` holds a run that finished them (its last checkpoint and
    summary.json are of that step), else None."""
    steps = checkpointing.saved_steps(os.path.join(workdir, "checkpoints"))
    if not steps or max(steps) != num_steps:
        return None
    try:
        with open(os.path.join(workdir, "summary.json")) as f:
            done = json.load(f).get("steps")
    except (OSError, ValueError):
        return None  # killed after its last checkpoint: evaluation and export are left to do
    return num_steps if done == num_steps else None


def train(
    config: config_lib.Config,
    objective: Objective,
    workdir: str,
    stored_config: Optional[config_lib.Config] = None,
) -> Dict[str, Any]:
    """Trains (or resumes training) until `total_steps`; returns a summary.

    Writes into `workdir`: config.json (`stored_config` when given, once the
    state is restored or initialised; else `config` unless there is one),
    schedule.json, metrics.jsonl (and TensorBoard events under tensorboard/ when
    tensorboardX is installed), checkpoints/, model.pystate and its
    description model.json (inference format, at the end) and summary.json.
    One run at a time per workdir: `perceiver train` holds a
    `workdir.WorkdirLock` around this call; other callers should too.

    A run that already finished `total_steps` (its last checkpoint and
    summary.json say so) is left as it is: the summary returned has
    `finished: True` and nothing is evaluated, exported or written. A longer
    `total_steps` continues the run, its learning rate continuous at the
    resume step (see `optim.continued_schedule`).

    Raises:
      NonFiniteError: when the loss (checked at every step's metrics) or the
        state (checked before each save) becomes NaN or infinite; the
        non-finite state is neither saved nor exported, and the message
        names the last good checkpoint.
      ValueError: when `total_steps` is below the step the checkpoints
        already hold.
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    num_steps = total_steps(config, objective)
    check_length(workdir, num_steps)
    if finished_step(workdir, num_steps) is not None:
        return {"finished": True, "steps": num_steps, "recipe": config.recipe, "workdir": workdir}

    mesh = parallel.make_mesh(config.mesh.data_parallel)
    batch_size = config.train.batch_size
    parallel.check_batch_size(batch_size, mesh)
    eval_batch_size = config.train.eval_batch_size or batch_size
    if objective.evaluate is not None and objective.eval_loader is not None:
        parallel.check_batch_size(eval_batch_size, mesh, "train.eval_batch_size")
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        every_steps=config.checkpoint.every_steps,
        keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )
    start_step = ckpt.latest_step() or 0
    segments = schedule_segments(workdir, start_step, num_steps)
    optimizer, schedule = optim.make_optimizer(config.optimizer, num_steps, batch_size, segments)
    if len(segments) > 1 and segments[-1][0] == start_step:
        rate = float(schedule(start_step))
        note = "; it had decayed to 0, so the added steps change nothing" if rate == 0 else ""
        _log(
            f"train.num_steps {segments[-2][1]} -> {num_steps} at step {start_step}: the learning "
            f"rate continues from {rate:.4g} and decays over the new total{note}"
        )
    _write_json(os.path.join(workdir, SCHEDULE_FILE), json.dumps({"segments": segments}) + "\n")

    build = initial_state(objective, optimizer, config.train.seed)
    abstract = jax.eval_shape(build)
    min_size = config.mesh.shard_min_size
    shardings = parallel.tree_shardings(abstract, mesh, config.mesh.shard_params, min_size)
    if config.mesh.shard_params:
        _log(parallel.sharding_report(abstract.params, shardings.params, mesh, min_size))

    data_state = None
    if ckpt.latest_step() is not None:
        target = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
        ts, data_state, start = ckpt.restore(target)
        _log(f"resumed from {ckpt.directory}/{start}")
    else:
        start = 0
        ts = jax.jit(build, out_shardings=shardings)()
        if objective.load_pretrained is not None:
            params, model_state = objective.load_pretrained(
                jax.tree_util.tree_map(checkpointing.fetch, ts.params),
                jax.tree_util.tree_map(checkpointing.fetch, ts.state),
            )
            params = jax.device_put(params, shardings.params)
            model_state = jax.device_put(model_state, shardings.state)
            ts = ts._replace(params=params, state=model_state)
    # Now that the checkpoint fits: the config the checkpoints will be of.
    _write_config(stored_config or config, workdir, overwrite=stored_config is not None)
    num_params = optim.count_params(ts.params)
    _log(
        f"{config.recipe}: {num_params:,} parameters, {num_steps} steps of {batch_size} examples "
        f"on {mesh.size} device(s) ({jax.process_count()} process(es)), workdir {workdir}"
    )

    train_step = compile_train_step(make_train_step(objective.loss, optimizer, schedule), shardings, mesh)
    eval_step = None
    if objective.evaluate is not None and objective.eval_loader is not None:
        eval_step = compile_eval_step(objective.evaluate, shardings.params, shardings.state, mesh)

    writer = metrics_lib.MetricsWriter(
        workdir,
        resume_step=start,
        enabled=jax.process_index() == 0,
        # Resumed at the end (killed after the last save): the final evaluation is redone.
        redo_eval_at=start if start == num_steps and config.train.final_eval else None,
    )
    per_process = batch_size // jax.process_count()
    batches = data_lib.Prefetcher(objective.train_loader(per_process, config.train.seed), data_state)
    bar = _progress(num_steps, start, config.train.progress)
    batch_sharding = parallel.batch_sharding(mesh)
    step = start
    pending = None
    last_train: Dict[str, float] = {}
    last_eval: Dict[str, float] = {}
    window_start, window_steps = time.time(), 0
    run_start = time.time()
    consumed = batches.state  # the data position of the batches `ts` has been trained on

    def diverged(what: str) -> NonFiniteError:
        ckpt.wait()  # saves in flight are of earlier, checked steps
        last = ckpt.latest_step()
        if last is None:
            where = f"no checkpoint was saved in {ckpt.directory}, so a rerun starts afresh"
        else:
            where = f"the last good checkpoint is step {last} in {ckpt.directory}, where a rerun resumes"
        return NonFiniteError(
            f"{what}; {where}; lower optimizer.base_lr (now {config.optimizer.base_lr:g}), "
            "or lengthen optimizer.warmup_steps or clip with optimizer.max_norm, and rerun."
        )

    def flush(item):
        """Logs one step's metrics (fetched a step late) and stops a run whose loss is not finite."""
        nonlocal last_train, window_start, window_steps
        s, metrics = item
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(values.get("loss", 0.0)):
            writer.write(s, "train", values)  # kept for the post-mortem
            raise diverged(f"the loss became {values['loss']} at step {s}")
        window_steps += 1
        now = time.time()
        if s % max(config.train.log_every, 1) == 0 or s == num_steps:
            values["examples_per_sec"] = window_steps * batch_size / max(now - window_start, 1e-9)
            window_start, window_steps = now, 0
            _log(
                f"step {s}/{num_steps} "
                + " ".join(f"{k} {v:.4g}" for k, v in values.items())
            )
        writer.write(s, "train", values)
        last_train = values
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4g}", refresh=False)

    def run_eval():
        nonlocal last_eval
        if eval_step is None:
            return
        last_eval = evaluate(
            objective, eval_step, ts, eval_batch_size, mesh, config.train.eval_max_batches
        )
        writer.write(step, "eval", last_eval)
        _log(f"eval at step {step}: " + " ".join(f"{k} {v:.4g}" for k, v in last_eval.items()))

    def save(s: int) -> None:
        """Saves step `s` unless some value of the state is no longer finite."""
        bad = checkpointing.nonfinite_leaves(
            {"params": ts.params, "state": ts.state, "opt_state": ts.opt_state}
        )
        if bad:
            raise diverged(
                f"non-finite values in {checkpointing.few(bad)} at step {s} (not saved)"
            )
        ckpt.save(s, ts, consumed)

    # SIGTERM (a cluster pre-empting the job) saves a checkpoint and stops cleanly.
    stop_signal = []
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop_signal.append(signum))
    # Every step's metrics are fetched (a step late), so checking the loss
    # there costs no extra wait; the whole state is checked only before it is
    # saved, where the save waits for it anyway.
    try:
        while step < num_steps:
            host_batch = next(batches)
            # Ctrl-C inside the step may come after it took (donated) `ts`: see below.
            stepped = train_step(ts, data_lib.to_global(host_batch, batch_sharding))
            # The state, its step and data position, and a due save change together:
            # Ctrl-C waits for the block's end.
            with _interrupt.held():
                ts, metrics = stepped
                step += 1
                consumed = batches.state
                if pending is not None:
                    flush(pending)  # fetched one step late, so the host never waits idle
                pending = (step, metrics)
                if ckpt.due(step):
                    flush(pending)  # the loss of the step about to be saved is checked too
                    pending = None
                    save(step)
            if stop_signal:
                raise KeyboardInterrupt
            if config.train.eval_every and step % config.train.eval_every == 0 and step < num_steps:
                run_eval()
        # The last checkpoint is written whole before Ctrl-C is heard (orbax
        # reports an interrupted wait with a traceback of its own).
        with _interrupt.held():
            if pending is not None:
                flush(pending)
                pending = None
            save(step)
            ckpt.wait()
    except KeyboardInterrupt:
        try:
            if _donated(ts):
                # Stopped inside a step after it took the state and before it
                # gave the new one back: there is no state to save.
                _log(f"interrupted during step {step + 1}; the latest checkpoint stays")
            elif step == start:
                _log("interrupted before this run's first step: nothing new to save")
            else:
                if pending is not None:
                    flush(pending)
                _log(f"interrupted: saving step {step} before stopping")
                save(step)
        finally:  # also when the state turned out non-finite
            ckpt.close()
            writer.close()
        raise
    except NonFiniteError:
        ckpt.close()
        writer.close()
        raise
    finally:
        batches.close()
        if bar is not None:
            bar.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    train_seconds = time.time() - run_start
    if config.train.final_eval:
        run_eval()
    summary: Dict[str, Any] = {
        "recipe": config.recipe,
        "steps": step,
        "resumed_from": start,
        "parameters": num_params,
        "train_seconds_this_run": train_seconds,
        "steps_this_run": step - start,
        "final_train": last_train,
        "eval": last_eval,
        "devices": mesh.size,
        "processes": jax.process_count(),
    }
    if config.checkpoint.export:
        description = dict(objective.describe(step)) if objective.describe is not None else None
        path = checkpointing.export(
            os.path.join(workdir, "model.pystate"), ts.params, ts.state, description=description
        )
        summary["exported"] = path
        summary["model"] = dict(objective.export_info)
        if description is not None:
            summary["description"] = inference_checkpoint.description_path(path)
    with _interrupt.held():  # closing waits on orbax's threads, as above
        ckpt.close()
        writer.close()
        # Atomic: a summary.json marks a finished run (see `finished_step`).
        _write_json(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2, default=str))
    return summary


def _donated(ts: TrainState) -> bool:
    """Whether `ts`'s arrays were given to a step (donated) and are gone."""
    return any(
        isinstance(x, jax.Array) and x.is_deleted() for x in jax.tree_util.tree_leaves(ts)
    )


def evaluate_checkpoint(
    config: config_lib.Config, objective: Objective, workdir: str, step: Optional[int] = None
) -> Dict[str, float]:
    """Evaluates a checkpoint of `workdir` (default: the latest) on the objective's evaluation set.

    Raises:
      ValueError: if the objective has no evaluation set.
      FileNotFoundError: if there is no checkpoint.
    """
    if objective.evaluate is None or objective.eval_loader is None:
        raise ValueError(f"recipe {config.recipe!r} has no evaluation set configured.")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    mesh = parallel.make_mesh(config.mesh.data_parallel)
    eval_batch_size = config.train.eval_batch_size or config.train.batch_size
    parallel.check_batch_size(eval_batch_size, mesh, "train.eval_batch_size")
    optimizer, _ = optim.make_optimizer(
        config.optimizer, total_steps(config, objective), config.train.batch_size
    )
    abstract = jax.eval_shape(initial_state(objective, optimizer, config.train.seed))
    shardings = parallel.tree_shardings(
        abstract, mesh, config.mesh.shard_params, config.mesh.shard_min_size
    )
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        ts, _, step = ckpt.restore(target, step)
    finally:
        ckpt.close()
    eval_step = compile_eval_step(objective.evaluate, shardings.params, shardings.state, mesh)
    result = evaluate(objective, eval_step, ts, eval_batch_size, mesh, config.train.eval_max_batches)
    return dict(result, step=float(step))
