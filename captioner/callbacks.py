"""Lightning's side of checkpoints: the atomic checkpoint writer, the system's checkpoint callbacks, resume state."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Optional

import torch
from fsspec.core import url_to_fs
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from captioner.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO`, but a checkpoint is first written next to its final name, then renamed.

    Lightning's own writer stages the file in the system's temporary folder and moves it; when that folder is on
    another file system (node-local `/tmp`, run folder on a network file system, as on most clusters) the move
    is a copy, and a job killed during it leaves a truncated `last.ckpt` in place of the previous one. A rename
    within one folder is atomic: a kill at any moment leaves the old file or the new one, complete. Temporary
    files left by a killed run are deleted by the next successful write of the same checkpoint name, and are
    named so that Lightning never mistakes them for checkpoints (`_temp_prefix`).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own way
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = _temp_prefix(path.name)
        with atomic_write(path, "wb", fsync=True, temp_name=f"{prefix}{os.getpid()}.tmp") as f:
            torch.save(checkpoint, f)
        # a run killed by SIGKILL mid-write leaves its temporary file: once a newer checkpoint of that name is in
        # place, those are garbage (one process writes a given checkpoint name)
        for stale in path.parent.iterdir():
            name = stale.name
            if name.startswith(prefix) and name.endswith(".tmp") and name[len(prefix) : -4].isdigit():
                stale.unlink(missing_ok=True)


def _temp_prefix(name: str) -> str:
    """`.<name>.` with `ckpt_` spelt `ckpt-`: Lightning takes the digits of every file whose name holds `ckpt_`
    for an `hpc_ckpt_<n>` number, so `.hpc_ckpt_2.ckpt.4242.tmp`, left by a job killed while saving, would make
    the requeued job resume from `hpc_ckpt_24242.ckpt`, which does not exist."""
    return f".{name.replace('ckpt_', 'ckpt-')}."


_HPC_NAME = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


def next_hpc_checkpoint(folder: str | os.PathLike) -> str:
    """`<folder>/hpc_ckpt_<n>.ckpt`, n one above the highest there (0 for none): the preemption checkpoint's name
    (`captioner.preemption`), whose highest number Lightning resumes from when a job starts under SLURM."""
    fs, uri = url_to_fs(str(folder))
    names = [os.path.basename(f["name"].rstrip("/")) for f in fs.listdir(uri)] if fs.isdir(uri) else []
    top = max((int(m.group(1)) for n in names if (m := _HPC_NAME.fullmatch(n))), default=0)
    return os.path.join(str(folder), f"hpc_ckpt_{top + 1}.ckpt")


def use_atomic_checkpoints(trainer) -> None:
    """Give `trainer` the atomic writer, unless it was configured with a checkpoint plugin of its own."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def carry_best_record(callback: ModelCheckpoint, state: dict[str, Any]) -> bool:
    """Give `callback` (a resumed run's monitoring `ModelCheckpoint`) the top-k record it had in the checkpoint
    (`state`, its entry in the checkpoint's `callbacks`), although the run now saves to a new version folder.

    Lightning keeps only `best_model_path` when the folder changed ("dirpath has changed"), so a resumed run's
    first validation always saved a "best" checkpoint, even one scoring below (or equal to) the run's best, which
    an uninterrupted run would not have kept, and tested. With the record carried over a resumed run keeps a new
    best only when it beats the whole run's, as an uninterrupted one does; Lightning never deletes a file in an
    earlier version folder. Nothing is carried when those files are gone (moved, renamed) or remote.

    Returns:
        Whether the record was carried over.
    """
    saved = state.get("best_k_models") or {}
    moved = callback.dirpath is not None and state.get("dirpath", callback.dirpath) != callback.dirpath
    if not (moved and saved and "://" not in str(callback.dirpath) and all(os.path.isfile(p) for p in saved)):
        return False
    # last_model_path stays the callback's own (a monitoring one writes no last.ckpt here)
    callback.load_state_dict({**state, "dirpath": callback.dirpath, "last_model_path": callback.last_model_path})
    return True


def last_checkpoints(every_n_train_steps: Optional[int] = None) -> list[ModelCheckpoint]:
    """Callbacks that write `last.ckpt` at the end of every epoch (after its validation) and, given
    `every_n_train_steps`, every that many training steps: the checkpoint to resume from.

    Not `ModelCheckpoint(monitor=..., save_last=True)`: since Lightning 2.6 it writes `last.ckpt` only when it also
    writes a top-k checkpoint, so after an epoch whose score did not improve `last.ckpt` stays at an older epoch.
    Here `last.ckpt` is the single "top-1 of no metric" checkpoint, kept on every save; both callbacks overwrite the
    one file. Lightning takes one period per callback (epochs or steps), hence two.
    """
    kinds = [{}] + ([{"every_n_train_steps": every_n_train_steps}] if every_n_train_steps else [])
    return [ModelCheckpoint(filename=ModelCheckpoint.CHECKPOINT_NAME_LAST, monitor=None, save_top_k=1,
                            enable_version_counter=False, **kind) for kind in kinds]


_OWN = "_captioner_system_checkpoint"  # marks the ModelCheckpoints a system made itself


def _settings(cb: ModelCheckpoint) -> tuple:
    keys = ("dirpath", "filename", "monitor", "mode", "save_top_k", "save_last", "save_weights_only",
            "_every_n_train_steps", "_every_n_epochs", "_train_time_interval")
    return tuple(str(getattr(cb, k, None)) for k in keys)


def with_user_checkpoints(trainer, *own: ModelCheckpoint) -> list[ModelCheckpoint]:
    """A system's own checkpoint callbacks followed by the `ModelCheckpoint`s the user gave the Trainer, which
    no longer holds any `ModelCheckpoint` itself: for `configure_callbacks`, which Lightning calls as each stage
    (`fit`, then `test`) starts.

    Lightning replaces every Trainer callback of a type that method returns, so a system returning only its own
    `ModelCheckpoint`s would silently drop one given in `--trainer.callbacks`: returned here, the user's (of any
    `ModelCheckpoint` class) are kept. Left out: Lightning's default (an unconfigured `ModelCheckpoint()`, which
    the system's supersede) and the system's own from an earlier call. The system's come first, so
    `trainer.checkpoint_callback`, whose best checkpoint training tests, stays the system's.

    Every `ModelCheckpoint` is taken out of `trainer.callbacks` here, rather than left for Lightning to replace: it
    picks what to replace by the first superclass it meets in a set of types, whose order follows the types' ids,
    so it differs from one process to the next. At `test` the trainer held the system's `BestCheckpoint` from
    `fit` beside plain `ModelCheckpoint`s: one DDP process replaced it and another kept it, that one ran one more
    `ModelCheckpoint.setup` broadcast than the others, and DDP hung at the start of the test.
    """
    for cb in own:
        setattr(cb, _OWN, True)
    if trainer is None:
        return list(own)
    default = _settings(ModelCheckpoint())
    users = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and not getattr(cb, _OWN, False)
             and not (type(cb) is ModelCheckpoint and _settings(cb) == default)]
    trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, ModelCheckpoint)]
    return [*own, *users]


# ----------------------------------------------------------------------------------------------- resume state


def _world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _own_rng_states() -> dict:
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(), "torch": torch.get_rng_state(),
              "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def collect_rng_states() -> dict:
    """The global random states (Python, NumPy, torch CPU and CUDA) as plain values and tensors (weights-only safe).

    Under DDP every process draws its own dropout masks, and only rank 0 writes the checkpoint: each rank's states
    are gathered into `ranks` (one collective, so every rank must call this, as every rank saves a checkpoint
    in Lightning), beside rank 0's own at the top level.
    """
    import torch.distributed as dist

    states = _own_rng_states()
    _, world = _world()
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, states)
        states = {**states, "ranks": gathered}
    return states


def set_rng_states(states: dict) -> None:
    """Restore what `collect_rng_states` collected: this rank's states when the checkpoint has as many ranks (a
    checkpoint of another world size, or of one process, gives every rank rank 0's); the CUDA states only on as
    many devices as it saw."""
    import numpy as np

    rank, world = _world()
    ranks = states.get("ranks")
    if isinstance(ranks, list) and len(ranks) == world:
        states = ranks[rank]
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in states["python"]))
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
