"""Training and fine-tuning Perceiver IO models, from one CPU to many accelerators.

Needs the 'train' extra (grain, orbax-checkpoint, tqdm, Pillow; tensorboardX
for TensorBoard and matplotlib for `plot`, both optional).

- `recipes`: the named recipes (imagenet, finetune_image, finetune_text, mlm,
  perceiver_ar, flow, flow_small, flow_small_photo) as configs in code;
  `main`: the `perceiver train` command.
- `objectives`: what the recipes optimise, one module per kind (image,
  masked_language, language_model, flow): config sections (`*Settings`),
  model-size rules, the `Objective` builder, the exported checkpoint's description.
- `config`: `Config` and its common sections, overrides and ranges.
- `trainer`: the `Objective` a recipe supplies, train state, jit-compiled
  train/eval steps, the loop with checkpoint-and-resume; `parallel`: device
  mesh, shardings, multi-host start.
- `losses`, `optim`: losses per objective; LAMB/AdamW, weight-decay masks, schedules.
- `data`, `images`, `text_data`, `synthetic_flow`, `augment`: grain pipelines.
- `checkpointing`: orbax checkpoints and export to the inference format.
- `workdir`: the run folder's checks and its lock (one trainer at a time);
  `runconfig`: the config a workdir remembers, and what may change on resume.
- `metrics`: metrics.jsonl and TensorBoard; `plot`: the curves as a PNG.
"""
