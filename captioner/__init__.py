"""captioner: describe a video in a sentence (pretrained CNN per frame, mean pooling, LSTM decoder)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from captioner.api import VideoCaptioner
    from captioner.checkpointing import CheckpointError
    from captioner.config import GenerationConfig
    from captioner.models.captioner import CaptionModel, ScoredCaption

# imported on first use: `import captioner.models` (a pure nn.Module) then loads no video or checkpoint room
_EXPORTS = {"VideoCaptioner": "captioner.api", "CaptionModel": "captioner.models.captioner",
            "ScoredCaption": "captioner.models.captioner", "GenerationConfig": "captioner.config",
            "CheckpointError": "captioner.checkpointing"}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'captioner' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
