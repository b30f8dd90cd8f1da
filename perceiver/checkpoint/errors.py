"""The error every checkpoint reader and check raises."""

from typing import List, Optional


class CheckpointError(ValueError):
    """A checkpoint file could not be read, or does not fit a model.

    Attributes:
      differences: for a checkpoint that does not fit, every difference
        (`tree_differences` lines); the message shows only the first few.
    """

    def __init__(self, message: str, differences: Optional[List[str]] = None):
        super().__init__(message)
        self.differences = list(differences or [])
