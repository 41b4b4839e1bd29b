"""Checkpoint files written atomically: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO`, but a checkpoint is first written next to its final name, then renamed.

    Lightning's own writer stages the file in the system's temporary folder and moves it; when that folder is on
    another file system (node-local `/tmp`, run folder on a network file system, as on most clusters) the move
    is a copy, and a job killed during it leaves a truncated `last.ckpt` in place of the previous one. A rename
    within one folder is atomic: a kill at any moment leaves the old file or the new one, complete. Temporary
    files left by a killed run are deleted by the next successful write of the same checkpoint name.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own way
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the name points to it
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        # a run killed by SIGKILL mid-write leaves its temporary file: once a newer checkpoint of that name is in
        # place, those are garbage (one process writes a given checkpoint name)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)


def use_atomic_checkpoints(trainer) -> None:
    """Give `trainer` the atomic writer, unless it was configured with a checkpoint plugin of its own."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
