"""Perceiver and Perceiver IO in JAX/Haiku, faithful to DeepMind's reference.

The public modules mirror the reference's: `perceiver.perceiver`,
`perceiver.io_processors`, `perceiver.position_encoding` and
`perceiver.bytes_tokenizer`.
"""

__version__ = "0.1.0"
