"""`perceiver convert`: a checkpoint between transformers' format and ours, either way.

The conversion checks its own paths (`perceiver.convert.convert`).
"""

from perceiver.cli._common import _add_cache_dir


def add_parsers(commands) -> None:
    """Adds `convert` to the CLI's subparsers."""
    sub = commands.add_parser(
        "convert", help="convert a checkpoint between transformers' format and ours (either way)"
    )
    sub.add_argument(
        "src",
        help="a transformers save_pretrained folder, or our checkpoint file (with its NAME.json) "
        "or a published name",
    )
    sub.add_argument(
        "dst",
        help="our checkpoint file to write (.pystate or .safetensors, with NAME.json), or the "
        "folder for transformers' from_pretrained",
    )
    sub.add_argument(
        "--conv-kernel-layout", choices=("oihw", "oiwh"), default="oihw",
        help="oiwh: the conv kernel transposed as transformers' conversion script wrote "
        "DeepMind's (default oihw, as torch applies it)",
    )
    sub.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"),
        help="the transformers weights' dtype (default float32)",
    )
    sub.add_argument(
        "--allow-deviations", action="store_true",
        help="write the conv-stem classifier, whose padding transformers cannot express",
    )
    _add_cache_dir(sub)
    sub.set_defaults(handler=_cmd_convert)


def _cmd_convert(args) -> str:
    # Imported here: perceiver.convert imports jax and haiku, which only this command needs.
    from perceiver import convert

    return convert.command(args)
