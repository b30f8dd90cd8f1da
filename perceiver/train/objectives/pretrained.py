"""Loading a pretrained checkpoint into a freshly initialised model, but for new modules."""

from typing import Dict

import jax

from perceiver import checkpoint as inference_checkpoint
from perceiver.train import finetune


def load_pretrained_fn(path: str, fresh, log=print):
    """(params, state) -> the same with the checkpoint at `path` merged in, but modules `fresh`."""

    def load(params, state):
        ckpt_params, ckpt_state = inference_checkpoint.load(path)
        params, loaded, dropped = finetune.merge_pretrained(params, ckpt_params, fresh, "params")
        state, _, _ = finetune.merge_pretrained(state, ckpt_state, fresh, "state")
        if jax.process_index() == 0:
            log(
                f"loaded {len(loaded)} modules from {path}; initialised afresh: {list(fresh)}; "
                f"dropped from the checkpoint: {summarize(dropped) or 'nothing'}"
            )
        return params, state

    return load


def summarize(modules) -> str:
    """Module names grouped by their top-level module: 'basic_decoder (10 modules), embed'."""
    groups: Dict[str, list] = {}
    for m in modules:
        groups.setdefault(m.split("/")[0], []).append(m)
    return ", ".join(f"{k} ({len(v)} modules)" if len(v) > 1 else v[0] for k, v in groups.items())
