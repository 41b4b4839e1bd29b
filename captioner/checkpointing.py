"""Checkpoint files and other outputs written atomically; finding, safely reading and resuming checkpoints."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Sequence

import torch
from fsspec.core import url_to_fs
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint


class CheckpointError(ValueError):
    """A file is missing or is not a captioner checkpoint."""


# ----------------------------------------------------------------------------------------------- atomic writing


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, temp_name: Optional[str] = None) -> Iterator[Path]:
    """A temporary path next to `path` for the caller to write; renamed to `path` when the block ends cleanly.

    A rename within one folder is atomic: a kill at any moment leaves the old file or the new one, complete. On an
    error the temporary file is deleted and `path` is left as it was; a kill leaves the temporary file, for the
    next write's sweep (`AtomicCheckpointIO`, `features.extract.remove_stale_temp_files`).

    Args:
        temp_name: the temporary file's name in `path`'s folder; default `.<name>.<pid>.tmp` (hidden, and never
            taken for the file itself by a reader globbing the folder).
    """
    path = Path(path)
    tmp = path.with_name(temp_name or f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", fsync: bool = False,
                 temp_name: Optional[str] = None) -> Iterator[IO]:
    """`open(path, mode)` for writing (text in UTF-8), atomically: see `atomic_path`.

    `fsync`: the data is on disk before the name points to it (a power cut cannot leave an empty file in place).
    """
    with atomic_path(path, temp_name) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    with atomic_write(path) as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write `data` as indented UTF-8 JSON to `path` atomically, creating its folder: readers never see part of it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


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
    """A system's own checkpoint callbacks followed by the `ModelCheckpoint`s the user gave the Trainer.

    For `configure_callbacks`: Lightning replaces every Trainer callback of a type that method returns, so a
    system returning only its own `ModelCheckpoint`s would silently drop one given in `--trainer.callbacks`.
    Returned here, the user's are kept. Left out: Lightning's default (an unconfigured `ModelCheckpoint()`, which
    the system's supersede) and the system's own from an earlier call (`fit`, then `test`). The system's come
    first, so `trainer.checkpoint_callback`, whose best checkpoint training tests, stays the system's.
    """
    for cb in own:
        setattr(cb, _OWN, True)
    default = _settings(ModelCheckpoint())
    users = [cb for cb in (trainer.callbacks if trainer is not None else [])
             if type(cb) is ModelCheckpoint and not getattr(cb, _OWN, False) and _settings(cb) != default]
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


# ----------------------------------------------------------------------------------------------- finding and reading

_SCORE = re.compile(r"(?:bleu4_|cider_|acc)(\d+\.\d+)(?:-v\d+)?\.ckpt$")  # the score in a best checkpoint's name
_EPOCH = re.compile(r"epoch(\d+)-")  # the epoch in a best checkpoint's name
_VERSION = re.compile(r"version_\d+")


def run_folder(checkpoint: str | os.PathLike) -> Path:
    """The run a checkpoint file belongs to: the Trainer's `default_root_dir`, above `<logger name>/version_<N>/`
    (`runs/synthetic` for `runs/synthetic/logs/version_1/checkpoints/last.ckpt`); the file's own folder when it
    lies in no version folder (a `ModelCheckpoint` given its own `dirpath`)."""
    checkpoint = Path(checkpoint)
    for folder in checkpoint.parents:
        if _VERSION.fullmatch(folder.name):
            return folder.parent.parent
    return checkpoint.parent


def best_checkpoint(files: Sequence[str | os.PathLike]) -> Path:
    """The best of `files`: the highest score in the name (`epoch18-bleu4_0.5616.ckpt`); on a tie the later epoch
    (`epoch03-bleu4_0.0000.ckpt` over `epoch00-bleu4_0.0000.ckpt`: a short run scores BLEU-4 0 at every epoch
    while it learns), then the newest file; the newest when no name has a score.

    The epoch in the name, not the file's age, decides a tie: copying a run folder (`cp`, `scp`) changes the ages.
    """

    def rank(f: Path) -> tuple:
        score, epoch = _SCORE.search(f.name), _EPOCH.match(f.name)
        return (float(score.group(1)) if score else float("-inf"), int(epoch.group(1)) if epoch else -1,
                f.stat().st_mtime, str(f))

    return max(map(Path, files), key=rank)


def best_of_run(run_dir: str | os.PathLike, current_best: str | os.PathLike) -> Path:
    """The best checkpoint of the run in `run_dir` (a Trainer's `default_root_dir`): `current_best` (this fit's)
    or the best `epoch*.ckpt` an earlier fit of the run kept in its own version folder, by `find_checkpoint`'s rule.

    A run resumed into a new version folder starts its `ModelCheckpoint` afresh there ("dirpath has changed"), so
    the callback's `best_model_path` is the best of the newest version folder only. Other runs' checkpoints
    (another `default_root_dir` beneath `run_dir`) are left out.
    """
    run_dir = Path(run_dir).resolve()
    earlier = [f for f in run_dir.rglob("epoch*.ckpt")
               if f.is_file() and _SCORE.search(f.name) and run_folder(f.resolve()) == run_dir]
    return best_checkpoint([Path(current_best), *earlier])


def find_checkpoint(path: str | os.PathLike) -> Path:
    """`path` itself when it is a file. For a folder (a run root such as `runs/synthetic`, a version folder, a
    `checkpoints/` folder), the best checkpoint beneath it: among the `epoch*.ckpt` files training keeps (one per
    run version, the best on the validation metric, whose score the name carries: `epoch18-bleu4_0.5616.ckpt`),
    the best by `best_checkpoint`'s rule (the highest score, then the later epoch); else the newest `last.ckpt`.
    A run resumed into a new version folder keeps a best checkpoint in each, so the highest score, not the newest
    file, is the run's best. Scores are compared within one run only: a folder above several runs (`runs/`, holding
    `runs/synthetic` and `runs/msvd`: other datasets, other test sets) is refused (see `run_folder`).

    Raises:
        CheckpointError: `path` does not exist, the folder holds no checkpoint, or checkpoints of several runs.
    """
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found")
        return path
    found = {pattern: [f for f in path.rglob(pattern) if f.is_file()] for pattern in ("epoch*.ckpt", "last.ckpt")}
    runs = sorted({run_folder(f) for files in found.values() for f in files})
    if len(runs) > 1:
        listed = ", ".join(map(str, runs[:5])) + (f" and {len(runs) - 5} more" if len(runs) > 5 else "")
        raise CheckpointError(f"{path}: holds the checkpoints of {len(runs)} runs ({listed}), whose scores are not "
                              "comparable: pass one run folder or a checkpoint file")
    for files in found.values():
        if files:
            return best_checkpoint(files)
    raise CheckpointError(f"{path}: no checkpoint in this folder (looked for epoch*.ckpt and last.ckpt beneath it)")


def _load_failure(err: Exception) -> str:
    """A one-line reason from `torch.load`'s error (its weights-only refusals span a paragraph)."""
    text = str(err).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:  # not a pickle at all, or one that asks to run code: keep only the refused item
        detail = text.split(marker, 1)[1].strip().splitlines()[0].split(". ")[0].rstrip(".")
        return f"not a PyTorch checkpoint, or one holding objects a safe load refuses: {detail}"
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


def load_safely(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """`torch.load(path)` with `weights_only=True`: no code in the file runs, whatever torch's default.

    `mmap`: map the file instead of reading it (where torch can: its zip format), for a caller that reads only the
    hyperparameters of a file whose weights are loaded elsewhere.

    Raises:
        CheckpointError: `<path>: not a loadable checkpoint (<one-line reason>)`.
    """
    import zipfile

    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as err:  # not a checkpoint, or one asking to run code (which the safe load refuses)
        raise CheckpointError(f"{path}: not a loadable checkpoint ({_load_failure(err)})") from None


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """A captioner checkpoint file's contents, loaded safely (`load_safely`) and checked to hold what a captioner
    is rebuilt from: `hyper_parameters` with the vocabulary and feature spec, and a `state_dict`.

    Raises:
        CheckpointError: the file is unreadable or not a captioner checkpoint.
    """
    ckpt = load_safely(path, map_location, mmap)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or not hp.get("vocab") or not hp.get("feature_spec") or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a captioner checkpoint (no vocabulary or feature spec inside)")
    if not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{path}: not a captioner checkpoint (its state_dict is not a dict)")
    return ckpt
