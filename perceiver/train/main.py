"""`perceiver train`: run a training recipe by name.

    perceiver train --config NAME --workdir DIR [--tiny] [KEY=VALUE ...]
    perceiver train --workdir DIR [KEY=VALUE ...]          # resume the run in DIR
    perceiver train --plot DIR [-o curves.png]             # draw its curves
    python -m perceiver.train.main --config flow --workdir /tmp/flow --tiny

KEY=VALUE sets any config field by its dotted path, parsed to its type
(`train.batch_size=64`, `optimizer.base_lr=1e-3`, `model.image_shape=(32,48)`,
`data.train_dir=/data/imagenet/train`), anywhere on the command line.
`--print-config` shows every field.

DIR remembers its run (DIR/config.json, see `runconfig`): running again
resumes from the latest checkpoint with the stored config, so `--config`,
`--tiny` and the overrides need not be repeated; an override that changes
the stored config is refused (naming each key, old and new value) unless the
key is safe to change (evaluation, logging, checkpointing, devices, workers,
`train.num_steps`) or `--allow-config-change` is given. A longer
`train.num_steps` continues the run with a continuous learning rate; a
finished run rerun says so and does nothing. `--export PATH` writes a
checkpoint of DIR (the latest, or `--step N`) in the published inference
format, with its description (PATH's name with .json: factory, sizes,
labels...), and exits; `--eval-only` evaluates it (evaluation overrides such
as `data.eval_seed=7` pick another evaluation set) and prints JSON.

Every field is checked against its range before anything is built. One
trainer at a time may use DIR (a lock on DIR/.lock; export and evaluation
share it among themselves). A run whose loss or parameters become NaN or
infinite stops with exit status 1, keeping its last good checkpoint and
exporting nothing; other errors are one line on stderr with status 2.
"""

import argparse
import copy
import glob
import importlib.util
import json
import os
import sys
from typing import List, Optional, Sequence

from perceiver import _interrupt

if __name__ == "__main__":  # Ctrl-C while the imports run: one line, no traceback
    _interrupt.early("perceiver train: interrupted (nothing written)")

from perceiver import _messages

# The modules of the optional 'train' extra, and the packages that install them.
REQUIREMENTS = (("grain", "grain"), ("orbax.checkpoint", "orbax-checkpoint"), ("PIL", "pillow"))
INSTALL = _messages.install_hint("train")


def missing_requirements() -> List[str]:
    """The packages of the 'train' extra that are not installed."""
    missing = []
    for module, package in REQUIREMENTS:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # its parent package is missing too
            found = False
        if not found:
            missing.append(package)
    return missing


def _fail(message: str, status: int = 2) -> int:
    """Prints `message` as one line on stderr; returns `status`."""
    line = " | ".join(part.strip() for part in str(message).strip().splitlines() if part.strip())
    print(f"perceiver train: error: {line}", file=sys.stderr)
    return status


def build_parser() -> argparse.ArgumentParser:
    from perceiver.train import recipes

    parser = argparse.ArgumentParser(
        prog="perceiver train",
        description="Train or fine-tune a Perceiver IO model with a named recipe.",
        epilog="recipes: " + ", ".join(recipes.CONFIGS),
    )
    parser.add_argument(
        "--config",
        help="recipe name: " + ", ".join(recipes.CONFIGS) + " (optional for a workdir that holds a run)",
    )
    parser.add_argument(
        "--workdir", help="folder for checkpoints, metrics and the exported model (required)"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a small variant that runs in about a minute on a CPU, on generated data or text "
        "that ships with Python; data you name (data.train_dir, data.train_paths, ...) replace "
        "those (at the first start: a workdir keeps its config)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    parser.add_argument(
        "--export", metavar="PATH", help="export a checkpoint of WORKDIR to PATH (.pystate) and exit"
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate a checkpoint of WORKDIR and exit")
    parser.add_argument(
        "--step", type=int, help="with --export or --eval-only: the checkpoint step (default: latest)"
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume, evaluate or export with overrides that change the workdir's stored config",
    )
    parser.add_argument(
        "--plot", metavar="WORKDIR", help="draw WORKDIR/metrics.jsonl into a PNG (-o PATH) and exit"
    )
    parser.add_argument(
        "-o", "--output", metavar="PNG", help="with --plot: the image (default WORKDIR/curves.png)"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, anywhere")
    return parser


def _plot_args(argv: Sequence[str]) -> Optional[List[str]]:
    """`perceiver plot`'s arguments when `argv` asks for --plot, else None."""
    out, found = [], False
    args = list(argv)
    i = 0
    while i < len(args):
        if args[i] == "--plot" and i + 1 < len(args):
            out.append(args[i + 1])
            found, i = True, i + 2
            continue
        if args[i].startswith("--plot="):
            out.append(args[i].split("=", 1)[1])
            found = True
        else:
            out.append(args[i])
        i += 1
    return out if found else None


def _require_checkpoints(workdir: str, what: str) -> str:
    """`workdir`'s checkpoints folder; FileNotFoundError ('train first') when it holds none."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory) or not any(d.isdigit() for d in os.listdir(directory)):
        raise FileNotFoundError(f"no checkpoint in {directory} to {what}; train first.")
    return directory


def _export(workdir: str, path: str, step: Optional[int], config) -> str:
    """Writes checkpoint `step` (default: the latest) of `workdir` to `path`; returns a report.

    The description beside it (`recipes.describe`) needs the objective built from
    `config` (for class names): when that fails (the data moved), the
    checkpoint is exported without one, and the report says why.

    Raises:
      FileNotFoundError: if there is no such checkpoint.
      NonFiniteError: if its parameters hold NaN or inf.
    """
    from perceiver import checkpoint as inference_checkpoint
    from perceiver.train import checkpointing
    from perceiver.train import recipes

    directory = _require_checkpoints(workdir, "export")
    ckpt = checkpointing.Checkpointer(directory, read_only=True)
    try:
        steps = ckpt.all_steps()
        params, state, step = ckpt.restore_params(step)
    finally:
        ckpt.close()
    bad = checkpointing.nonfinite_leaves({"params": params, "state": state})
    if bad:
        raise checkpointing.NonFiniteError(
            f"step {step} in {directory} holds non-finite values ({checkpointing.few(bad)}); "
            f"export an earlier step with --step (saved steps: {sorted(steps)})."
        )
    try:
        objective = recipes.build_task(config, workdir, pretrained=False)
        description, note = objective.describe(step), ""
    except (OSError, ValueError, TypeError) as e:
        description = None
        note = " (without a description: " + " ".join(str(e).split()) + ")"
    with _interrupt.held():  # Ctrl-C during the writes comes after them: say they happened
        checkpointing.export(path, params, state, description=description)
        _EXPORTED.append(path)
    if description is not None:
        note = f" (described in {inference_checkpoint.description_path(path)})"
    return f"exported step {step} of {workdir} to {path}{note}"


# What `_export` has written in this process, for the line Ctrl-C prints.
_EXPORTED: List[str] = []


def _undone(start) -> str:
    """What a failed start took away, in words."""
    if start.made:
        return f"removed {start.path}, which this start had made"
    return f"{start.path} is left as it was"


def _interrupted(mode: str, workdir: str, undone) -> str:
    """What an interrupted command leaves, in words that are true whenever Ctrl-C came."""
    if mode == "export":
        return f"after exporting {_EXPORTED[-1]}" if _EXPORTED else "nothing exported"
    if mode == "eval-only":
        return "nothing written"
    from perceiver.train import checkpointing

    steps = checkpointing.saved_steps(os.path.join(workdir, "checkpoints"))
    if steps:
        return f"the latest checkpoint is step {steps[-1]} in {workdir}; rerun to resume"
    where = f"; {_undone(undone)}" if undone is not None else ""
    return f"before the first checkpoint: nothing saved{where}"


def _paths_of(value) -> List[str]:
    """The files and folders a data path setting names (globs expanded)."""
    values = [value] if isinstance(value, str) else list(value or ())
    found: List[str] = []
    for item in values:
        if not item:
            continue
        item = os.path.expanduser(item)
        found += sorted(glob.glob(item)) if glob.has_magic(item) else [item]
    return found


def _check_run_paths(workdir: str, config, export: Optional[str], training: bool) -> None:
    """Refuses, before any work, outputs that would replace what the run reads.

    The run reads its data (data.train_dir, data.eval_dir, data.train_paths,
    data.eval_paths), task.pretrained and the workdir's own files; it writes
    `export` (and its description) or, training, the workdir (with
    WORKDIR/model.pystate and model.json at the end).

    Raises:
      ValueError: in one line, naming the output and the input.
    """
    from perceiver import checkpoint as inference_checkpoint
    from perceiver import _outputs as outputs

    inputs = []
    for key in ("train_dir", "eval_dir", "train_paths", "eval_paths"):
        for item in _paths_of(getattr(config.data, key, None)):
            inputs.append((f"data.{key}", item))
    pretrained = getattr(getattr(config, "task", None), "pretrained", "") or ""
    if pretrained and pretrained != "none":
        files = outputs._checkpoint_files(pretrained, None)
        inputs += [("task.pretrained" + " description" * (i > 0), f) for i, f in enumerate(files)]
    try:
        if export is not None:
            own = [(f"the run's {name}", os.path.join(workdir, name))
                   for name in ("config.json", "schedule.json", "summary.json", "metrics.jsonl", ".lock")]
            outputs._check_outputs([("--export", export, "checkpoint")], inputs + own)
            description = inference_checkpoint.description_path(export)
            outputs._check_outputs([("--export's description", description, None)], inputs + own)
        elif training:
            for what, item in inputs:
                if what.startswith("data.") and os.path.isdir(item):
                    folder = os.path.realpath(item)
                    inside = os.path.realpath(workdir)
                    if inside == folder or inside.startswith(folder + os.sep):
                        raise outputs.UserError(
                            f"--workdir {workdir} is inside {what} {item}: the run's files would be "
                            "read as data; give a workdir outside it"
                        )
            if config.checkpoint.export:
                model = os.path.join(workdir, "model.pystate")
                for target in (model, inference_checkpoint.description_path(model)):
                    for what, item in inputs:
                        if os.path.isfile(item) and outputs._same_file(target, item):
                            raise outputs.UserError(
                                f"{what} {item} is {target}, which this run replaces with its "
                                "own model at the end; copy it elsewhere and give the copy, or "
                                "set checkpoint.export=false"
                            )
    except outputs.UserError as e:
        raise ValueError(str(e)) from None


def _finished_line(workdir: str, steps: int) -> str:
    return f"{workdir} already finished step {steps} of {steps}; raise train.num_steps to train longer"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs `perceiver train`; returns the exit status.

    0: done; 1: the run diverged (a NaN or infinite loss or parameter); 2: bad
    arguments or settings, a busy or unusable --workdir, missing files or
    packages; 130: interrupted. Every error is one line on stderr.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    plot_args = _plot_args(argv)
    if plot_args is not None:  # needs matplotlib only
        from perceiver.train import plot

        return plot.main(plot_args, prog="perceiver train --plot")
    missing = missing_requirements()
    if missing:
        return _fail(f"training needs the 'train' extra (missing: {', '.join(missing)}): {INSTALL}")
    parser = build_parser()
    try:
        # Intermixed: KEY=VALUE items may come before, between and after options.
        args = parser.parse_intermixed_args(argv)
        if not args.workdir:
            parser.error("the following arguments are required: --workdir")
    except SystemExit as e:  # --help, or a usage error argparse has reported
        return e.code if isinstance(e.code, int) else 2
    try:
        import jax

        from perceiver import checkpoint as inference_checkpoint
        from perceiver import hub
        from perceiver.train import checkpointing
        from perceiver.train import config as config_lib
        from perceiver.train import parallel
        from perceiver.train import recipes
        from perceiver.train import runconfig
        from perceiver.train import trainer
        from perceiver.train import workdir as workdir_lib
    except ModuleNotFoundError as e:
        return _fail(f"training needs the 'train' extra (missing module {e.name}): {INSTALL}")

    user_errors = (ValueError, OSError, inference_checkpoint.CheckpointError, hub.FetchError)
    lock = None
    start = None  # what the workdir held before a training start, to undo a failed one
    mode = "export" if args.export else "eval-only" if args.eval_only else "train"
    _EXPORTED.clear()
    path = os.path.abspath(os.path.expanduser(args.workdir))
    try:
        config, _, changes = runconfig.resolve(path, args.config, args.tiny, args.overrides)
        recipes.validate(config)  # every field, before any data or model is built
        if args.print_config:
            print(config_lib.to_json(config))
            return 0
        training = not (args.export or args.eval_only)
        if changes:
            # Before the first checkpoint nothing depends on the stored config.
            resuming = bool(checkpointing.saved_steps(os.path.join(path, "checkpoints")))
            if not training:
                runconfig.check(changes, runconfig.EVAL_SAFE, path, args.allow_config_change,
                                "evaluating and exporting")
            elif resuming:
                runconfig.check(changes, runconfig.SAFE_ON_RESUME, path, args.allow_config_change,
                                "resuming")
        # Outputs that would replace an input are refused before any work.
        _check_run_paths(path, config, args.export if args.export else None, training)
        if args.export:
            workdir = workdir_lib.prepare(args.workdir, create=False)
            _require_checkpoints(workdir, "export")
            # Shared: readers exclude a trainer (which deletes old and unfinished
            # checkpoints), not each other.
            lock = workdir_lib.WorkdirLock(workdir, shared=True, what="export").acquire()
            print(_export(workdir, args.export, args.step, config))
            return 0
        # Before any other JAX call: joining a multi-process run.
        distributed = parallel.maybe_initialize_distributed(config.mesh.distributed)
        if training and not distributed:  # several processes share the folder: leave it be
            start = workdir_lib.StartRecord(path)
        workdir = workdir_lib.prepare(args.workdir, create=not args.eval_only)
        if args.eval_only:
            _require_checkpoints(workdir, "evaluate")
            lock = workdir_lib.WorkdirLock(workdir, shared=True, what="eval-only").acquire()
        elif jax.process_index() == 0:  # the processes of one run share the folder
            lock = workdir_lib.WorkdirLock(workdir, what="train").acquire()
        num_steps = config.train.num_steps
        if training and num_steps:  # before any data or model is built
            trainer.check_length(workdir, num_steps)
            if trainer.finished_step(workdir, num_steps) is not None:
                print(_finished_line(workdir, num_steps))
                return 0
        requested = copy.deepcopy(config)  # build_task fills in what the data decide
        try:
            objective = recipes.build_task(config, workdir, pretrained=training)
        except TypeError as e:  # e.g. a model.KEY the factory does not take
            raise ValueError(f"the {config.recipe} recipe's model or data settings: {e}") from None
        if args.eval_only:
            result = trainer.evaluate_checkpoint(config, objective, workdir, args.step)
            print(json.dumps(result, sort_keys=True))
            return 0
        if changes and jax.process_index() == 0:
            changed = runconfig.describe(changes)
            print(f"{workdir}: config changed from {runconfig.CONFIG_FILE}: {changed}")
        # Written by the trainer once the checkpoint is restored: a change that
        # does not fit it leaves the stored config as it was.
        summary = trainer.train(config, objective, workdir, stored_config=requested)
        if summary.get("finished"):  # a length given in epochs
            print(_finished_line(workdir, summary["steps"]))
            return 0
    except trainer.NonFiniteError as e:
        # The workdir stays: its metrics show how the run diverged.
        return _fail(e, status=1)
    except user_errors as e:
        undone = start is not None and start.undo(locked=lock is not None)
        if undone and start.made:
            return _fail(f"{str(e).rstrip('.')} ({_undone(start)})")
        return _fail(e)
    except KeyboardInterrupt:
        undone = start is not None and start.undo(locked=lock is not None)
        print(f"perceiver train: interrupted ({_interrupted(mode, path, start if undone else None)})",
              file=sys.stderr)
        return 130
    except BaseException:
        if start is not None:
            start.undo(locked=lock is not None)
        raise
    finally:
        if lock is not None:
            lock.release()
    evaluation = summary.get("eval") or {}
    loss = summary["final_train"].get("loss")
    line = f"done: {summary['steps']} steps"
    # None when resumed after the last step (killed before its evaluation and export).
    line += f"; final train loss {loss:.4g}" if loss is not None else " (no training step this run)"
    if evaluation:
        line += "; eval " + " ".join(f"{k} {v:.4g}" for k, v in evaluation.items())
    if summary.get("exported"):
        line += f"; model exported to {summary['exported']}"
    print(line)
    return 0


if __name__ == "__main__":
    _interrupt.install()  # Ctrl-C stops cleanly at any moment (see _interrupt)
    try:
        status = main()
    except KeyboardInterrupt:  # before main's own handling began
        print("perceiver train: interrupted (nothing written)", file=sys.stderr)
        status = 130
    sys.exit(_interrupt.finish(status))
