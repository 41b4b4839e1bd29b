"""captioner: describe a video in a sentence (pretrained CNN per frame, mean pooling, LSTM decoder)."""

from captioner.checkpointing import CheckpointError
from captioner.models.captioner import ScoredCaption, VideoCaptioner

__all__ = ["VideoCaptioner", "ScoredCaption", "CheckpointError"]
__version__ = "0.1.0"
