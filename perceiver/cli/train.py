"""`perceiver train` and `perceiver plot`: training's own programs, listed in `perceiver --help`.

Each has its own parser (recipes, KEY=VALUE overrides); `perceiver.cli.main`
hands it the arguments unparsed.
"""

from typing import Sequence


def add_parsers(commands) -> None:
    """Adds `train` and `plot` to the CLI's subparsers, each with the program that parses its arguments."""
    sub = commands.add_parser(
        "train",
        help="train or fine-tune with a named recipe (see `perceiver train --help`)",
        add_help=False,
    )
    sub.set_defaults(program=_train)
    sub = commands.add_parser(
        "plot", help="draw a training run's curves into a PNG (perceiver plot WORKDIR -o curves.png)",
        add_help=False,
    )
    sub.set_defaults(program=_plot)


def _train(argv: Sequence[str]) -> int:
    from perceiver.train import main as train_main

    return train_main.main(argv)


def _plot(argv: Sequence[str]) -> int:
    # A training run's curves: part of training, with its own parser.
    from perceiver.train import plot

    return plot.main(argv)
