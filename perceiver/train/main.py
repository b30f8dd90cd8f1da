"""`perceiver train`: run a training recipe by name.

    perceiver train --config NAME --workdir DIR [--tiny] [KEY=VALUE ...]
    python -m perceiver.train.main --config flow --workdir /tmp/flow --tiny

Running the same command again resumes from the latest checkpoint in DIR.
KEY=VALUE sets any config field by its dotted path, parsed to its type
(`train.batch_size=64`, `optimizer.base_lr=1e-3`, `model.image_shape=(32,48)`,
`data.train_dir=/data/imagenet/train`). `--print-config` shows every field.
`--export PATH` writes a checkpoint of DIR (the latest, or `--step N`) in the
published inference format and exits; `--eval-only` evaluates it (overrides
such as `data.eval_seed=7` pick another evaluation set) and prints JSON.

Every field is checked against its range before anything is built. One
trainer at a time may use DIR (a lock on DIR/.lock; export and evaluation
share it among themselves). A run whose loss or parameters become NaN or
infinite stops with exit status 1, keeping its last good checkpoint and
exporting nothing; other errors are one line on stderr with status 2.
"""

import argparse
import importlib.util
import json
import os
import sys
from typing import List, Optional, Sequence

# The modules of the optional 'train' extra, and the packages that install them.
REQUIREMENTS = (("grain", "grain"), ("orbax.checkpoint", "orbax-checkpoint"), ("PIL", "pillow"))
INSTALL = "pip install -e '.[train]'"


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
    parser.add_argument("--config", required=True, help="recipe name: " + ", ".join(recipes.CONFIGS))
    parser.add_argument(
        "--workdir", required=True, help="folder for checkpoints, metrics and the exported model"
    )
    parser.add_argument("--tiny", action="store_true", help="a small variant that runs in under a minute on a CPU, on generated data")
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    parser.add_argument(
        "--export", metavar="PATH", help="export a checkpoint of WORKDIR to PATH (.pystate) and exit"
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate a checkpoint of WORKDIR and exit")
    parser.add_argument(
        "--step", type=int, help="with --export or --eval-only: the checkpoint step (default: latest)"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser


def _require_checkpoints(workdir: str, what: str) -> str:
    """`workdir`'s checkpoints folder; FileNotFoundError ('train first') when it holds none."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory) or not any(d.isdigit() for d in os.listdir(directory)):
        raise FileNotFoundError(f"no checkpoint in {directory} to {what}; train first.")
    return directory


def _export(workdir: str, path: str, step: Optional[int]) -> str:
    """Writes checkpoint `step` (default: the latest) of `workdir` to `path`; returns a report.

    Raises:
      FileNotFoundError: if there is no such checkpoint.
      NonFiniteError: if its parameters hold NaN or inf.
    """
    from perceiver.train import checkpointing

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
    checkpointing.export(path, params, state)
    return f"exported step {step} of {workdir} to {path}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs `perceiver train`; returns the exit status.

    0: done; 1: the run diverged (a NaN or infinite loss or parameter); 2: bad
    arguments or settings, a busy or unusable --workdir, missing files or
    packages; 130: interrupted. Every error is one line on stderr.
    """
    missing = missing_requirements()
    if missing:
        return _fail(f"training needs the 'train' extra (missing: {', '.join(missing)}): {INSTALL}")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has reported
        return e.code if isinstance(e.code, int) else 2
    try:
        import jax

        from perceiver import checkpoint as inference_checkpoint
        from perceiver import hub
        from perceiver.train import config as config_lib
        from perceiver.train import parallel
        from perceiver.train import recipes
        from perceiver.train import trainer
        from perceiver.train import workdir as workdir_lib
    except ModuleNotFoundError as e:
        return _fail(f"training needs the 'train' extra (missing module {e.name}): {INSTALL}")

    user_errors = (ValueError, OSError, inference_checkpoint.CheckpointError, hub.FetchError)
    lock = None
    try:
        config = recipes.get_config(args.config, tiny=args.tiny)
        config_lib.apply_overrides(config, args.overrides)
        recipes.validate(config)  # every field, before any data or model is built
        if args.print_config:
            print(config_lib.to_json(config))
            return 0
        if args.export:
            workdir = workdir_lib.prepare(args.workdir, create=False)
            _require_checkpoints(workdir, "export")
            # Shared: readers exclude a trainer (which deletes old and unfinished
            # checkpoints), not each other.
            lock = workdir_lib.WorkdirLock(workdir, shared=True, what="export").acquire()
            print(_export(workdir, args.export, args.step))
            return 0
        # Before any other JAX call: joining a multi-process run.
        parallel.maybe_initialize_distributed(config.mesh.distributed)
        workdir = workdir_lib.prepare(args.workdir, create=not args.eval_only)
        if args.eval_only:
            _require_checkpoints(workdir, "evaluate")
            lock = workdir_lib.WorkdirLock(workdir, shared=True, what="eval-only").acquire()
        elif jax.process_index() == 0:  # the processes of one run share the folder
            lock = workdir_lib.WorkdirLock(workdir, what="train").acquire()
        try:
            task = recipes.build_task(config, workdir)
        except TypeError as e:  # e.g. a model.KEY the factory does not take
            raise ValueError(f"the {config.recipe} recipe's model or data settings: {e}") from None
        if args.eval_only:
            result = trainer.evaluate_checkpoint(config, task, workdir, args.step)
            print(json.dumps(result, sort_keys=True))
            return 0
        summary = trainer.train(config, task, workdir)
    except trainer.NonFiniteError as e:
        return _fail(e, status=1)
    except user_errors as e:
        return _fail(e)
    except KeyboardInterrupt:
        print("perceiver train: interrupted (checkpoint saved; rerun to resume)", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()
    evaluation = summary.get("eval") or {}
    loss = summary["final_train"].get("loss", float("nan"))
    line = f"done: {summary['steps']} steps; final train loss {loss:.4g}"
    if evaluation:
        line += "; eval " + " ".join(f"{k} {v:.4g}" for k, v in evaluation.items())
    if summary.get("exported"):
        line += f"; model exported to {summary['exported']}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
