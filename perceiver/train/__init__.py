"""Training and fine-tuning Perceiver IO models, from one CPU to many accelerators.

Needs the 'train' extra (grain, orbax-checkpoint, tqdm, Pillow; tensorboardX
for TensorBoard and matplotlib for `plot`, both optional).

- `recipes`: the named recipes (imagenet, finetune_image, finetune_text, mlm,
  flow, flow_small) as configs in code; `main`: the `perceiver train` command.
- `trainer`: train state, jit-compiled train/eval steps, the loop with
  checkpoint-and-resume; `parallel`: device mesh, shardings, multi-host start.
- `losses`, `optim`: losses per task; LAMB/AdamW, weight-decay masks, schedules.
- `data`, `images`, `text`, `synthetic_flow`, `augment`: grain pipelines.
- `checkpointing`: orbax checkpoints and export to the inference format.
- `workdir`: the run folder's checks and its lock (one trainer at a time);
  `runconfig`: the config a workdir remembers, and what may change on resume.
- `metrics`: metrics.jsonl and TensorBoard; `plot`: the curves as a PNG.
"""
