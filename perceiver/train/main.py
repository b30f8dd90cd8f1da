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
"""

import argparse
import json
import os
import sys
from typing import Optional, Sequence


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


def _export(workdir: str, path: str, step: Optional[int]) -> str:
    from perceiver.train import checkpointing

    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    params, state, step = ckpt.restore_params(step)
    checkpointing.export(path, params, state)
    ckpt.close()
    return f"exported step {step} of {workdir} to {path}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs `perceiver train`; returns the exit status (2 for bad arguments)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has reported
        return e.code if isinstance(e.code, int) else 2
    from perceiver import checkpoint as inference_checkpoint
    from perceiver.train import config as config_lib
    from perceiver.train import parallel
    from perceiver.train import recipes
    from perceiver.train import trainer

    try:
        config = recipes.get_config(args.config, tiny=args.tiny)
        config_lib.apply_overrides(config, args.overrides)
        if args.print_config:
            print(config_lib.to_json(config))
            return 0
        if args.export:
            print(_export(args.workdir, args.export, args.step))
            return 0
        # Before any other JAX call: joining a multi-process run.
        parallel.maybe_initialize_distributed(config.mesh.distributed)
        workdir = os.path.abspath(os.path.expanduser(args.workdir))
        os.makedirs(workdir, exist_ok=True)
        try:
            task = recipes.build_task(config, workdir)
        except TypeError as e:  # e.g. a model.KEY the factory does not take
            raise ValueError(f"the {config.recipe} recipe's model or data settings: {e}") from None
        if args.eval_only:
            result = trainer.evaluate_checkpoint(config, task, workdir, args.step)
            print(json.dumps(result, sort_keys=True))
            return 0
        summary = trainer.train(config, task, workdir)
    except (ValueError, FileNotFoundError, inference_checkpoint.CheckpointError) as e:
        print(f"perceiver train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("perceiver train: interrupted (checkpoint saved; rerun to resume)", file=sys.stderr)
        return 130
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
