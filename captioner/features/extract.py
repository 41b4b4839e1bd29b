"""Clips to cached features, written once: crop in workers, encode, save; run in-process or by Lightning's predict loop.

`extract_in_process` is what training's `prepare_data` runs; `run_extraction` is `captioner extract` (1 CPU to N GPUs
or nodes). Both read `clip_loader`'s batches and encode them with `encode_batch`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from captioner.config import FeatureSpec
from captioner.features.cache import FeatureCache, format_failures, parse_failures
from captioner.io import write_text_atomic
from captioner.models.encoder import FrameEncoder, Preprocessing
from captioner.video import VideoReadError, read_frames

log = logging.getLogger(__name__)


class CroppedClips(Dataset):
    """`(id, path)` -> `(id, frames (T, 3, S, S) uint8 resized and centre-cropped, or None, error or None)`.

    Decoding and `FrameEncoder.crop` (its `Preprocessing.crop`) run in the DataLoader workers; only
    normalisation is left for the encoder's device, so a batch crosses to a GPU as compact uint8. An unreadable
    clip is that clip's problem only: its error is carried along for the report.
    """

    def __init__(self, items: Sequence[tuple[str, str]], num_frames: int, preprocessing: Preprocessing,
                 seek: str = "exact"):
        self.items, self.num_frames, self.preprocessing, self.seek = list(items), num_frames, preprocessing, seek

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        vid, path = self.items[i]
        try:
            frames = read_frames(path, self.num_frames, self.preprocessing.resize_size, seek=self.seek)
        except VideoReadError as err:
            return vid, None, str(err)
        except Exception as err:  # a decoder failing in a way nobody foresaw: still this clip's problem only
            return vid, None, " ".join(f"{path}: could not be read ({type(err).__name__}: {err})".split())
        # contiguous: a worker sends the crop, not the whole decoded frames behind a view of them
        return vid, self.preprocessing.crop(frames).contiguous(), None


def collate_cropped(batch) -> dict:
    """Stack the readable clips; carry the unreadable ones' errors along for the report."""
    ok = [(vid, x) for vid, x, err in batch if err is None]
    return {
        "ids": [vid for vid, _ in ok],
        "frames": torch.stack([x for _, x in ok]) if ok else None,  # (B, T, 3, S, S) uint8
        "failures": [(vid, err) for vid, _, err in batch if err is not None],
    }


def usable_workers(requested: int) -> int:
    """`requested` DataLoader workers, at most one per CPU this process may run on (as torch counts them).

    A config written for a big machine (`num_workers: 8`) then runs on a small one quietly, instead of with torch's
    "will create 8 worker processes ... suggested max number of worker" warning at every loader it starts.
    """
    try:
        cpus = len(os.sched_getaffinity(0))  # a job's share of the machine (SLURM, taskset, containers)
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(0, min(requested, cpus))


def clip_loader(items: Sequence[tuple[str, str]], spec: FeatureSpec, preprocessing: Preprocessing,
                batch_size: int = 16, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Batches of cropped clips, in the order of `items` (see `collate_cropped`), decoded in `num_workers`
    (at most one per CPU, `usable_workers`)."""
    return DataLoader(CroppedClips(items, spec.num_frames, preprocessing, spec.seek), batch_size=batch_size,
                      num_workers=usable_workers(num_workers), collate_fn=collate_cropped, pin_memory=pin_memory,
                      shuffle=False)


def encode_batch(encoder: FrameEncoder, batch: dict) -> Optional[torch.Tensor]:
    """A `collate_cropped` batch -> features `(B, T, D)` of its readable clips; `None` when it has none."""
    return encoder.encode_cropped(batch["frames"]) if batch["frames"] is not None else None


def extract_in_process(
    spec: FeatureSpec,
    items: Sequence[tuple[str, str]],
    cache: FeatureCache,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[tuple[str, str]]:
    """Encode every clip of `items` not yet in `cache`, in this process on `device`, saving each as its batch ends.

    Returns:
        `(video id, error message)` for each clip that could not be read; the others are all cached. Writing
        the report is the caller's: training keeps the clips it listed before.
    """
    from tqdm.auto import tqdm

    todo = [(vid, p) for vid, p in items if not cache.has(vid)]
    if not todo:
        return []
    encoder = FrameEncoder.from_spec(spec).to(device).eval()
    failures: list[tuple[str, str]] = []
    with tqdm(total=len(todo), desc=f"Extracting features ({spec.key})", unit="clip", disable=not progress) as bar:
        for batch in clip_loader(todo, spec, encoder.preprocessing, batch_size, num_workers):
            feats = encode_batch(encoder, batch)  # (B, T, D)
            for vid, f in zip(batch["ids"], feats if feats is not None else ()):
                cache.save(vid, f)
            failures += batch["failures"]
            bar.update(len(batch["ids"]) + len(batch["failures"]))
    return failures


class FeatureExtractor(pl.LightningModule):
    """The frozen frame encoder of `spec` as a LightningModule whose `predict_step` encodes a batch of clips.

    Args:
        spec: backbone, weights, frame count and image size; the cache folder is named after it.
    """

    def __init__(self, spec: FeatureSpec):
        super().__init__()
        self.spec = spec
        self.encoder = FrameEncoder.from_spec(spec)  # channels-last weights; bf16 autocast when the spec says so

    @property
    def preprocessing(self) -> Preprocessing:
        return self.encoder.preprocessing

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"ids": batch["ids"], "feats": encode_batch(self.encoder, batch), "failures": batch["failures"]}


class ExtractionData(pl.LightningDataModule):
    """The clips still missing from the cache, decoded in DataLoader workers.

    The to-do list is made once, on global rank 0, after every process has joined and before any writes,
    then broadcast: all ranks shard the same list (Lightning's DistributedSampler gives each one its part).
    """

    def __init__(self, items: Sequence[tuple[str, str]], cache: FeatureCache, preprocessing: Preprocessing,
                 batch_size: int = 16, num_workers: int = 4, pin_memory: bool = False):
        super().__init__()
        self.items, self.cache, self.preprocessing = list(items), cache, preprocessing
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.todo: list[tuple[str, str]] = []

    def setup(self, stage: str) -> None:
        todo = None
        if self.trainer.is_global_zero:
            remove_stale_temp_files(self.cache)
            todo = [(vid, path) for vid, path in self.items if not self.cache.has(vid)]
        self.todo = self.trainer.strategy.broadcast(todo, src=0)

    def predict_dataloader(self) -> DataLoader:
        return clip_loader(self.todo, self.cache.spec, self.preprocessing, self.batch_size, self.num_workers,
                           self.pin_memory)


class FeatureWriter(BasePredictionWriter):
    """Save each clip's features as soon as its batch is done (`FeatureCache.save`: write, then rename).

    On a GPU, a batch's features are written when the next batch ends (the last at the end of the run, or when
    it stops on an error): their copy to the host runs while the next batch is computed, instead of making the
    GPU wait for the files.
    A killed run loses at most the batches in flight. Unreadable clips are listed per rank, and rank 0 merges
    the lists into `<cache dir>/failed.txt` (`<id>\\t<reason>` per line) at the end of the run.
    """

    def __init__(self, cache: FeatureCache):
        super().__init__(write_interval="batch")
        self.cache = cache
        self.written = 0
        self.failures: list[tuple[str, str]] = []
        self.merged_failures: Optional[list[tuple[str, str]]] = None
        self._pending: Optional[tuple[list[str], torch.Tensor, Any]] = None  # (ids, host features, copy done)

    def write_on_batch_end(self, trainer, pl_module, prediction: Any, batch_indices, batch, batch_idx: int,
                           dataloader_idx: int) -> None:
        self._write_pending()
        feats = prediction["feats"]
        if feats is not None:
            # one transfer per batch; from a GPU it goes to page-locked memory without waiting for the GPU
            host = feats.to("cpu", torch.float16, non_blocking=feats.is_cuda)
            done = torch.cuda.Event() if feats.is_cuda else None
            if done is not None:
                done.record(torch.cuda.current_stream(feats.device))
            self._pending = (prediction["ids"], host, done)
            if done is None:  # on the CPU nothing runs meanwhile: write now
                self._write_pending()
        self.failures += prediction["failures"]

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        try:
            self._write_pending()  # a finished batch is kept whatever stopped the run
        except Exception:  # e.g. the GPU itself failed: the run's own error is the one to report
            pass

    def _write_pending(self) -> None:
        if self._pending is None:
            return
        ids, host, done = self._pending
        self._pending = None
        if done is not None:
            done.synchronize()
        for vid, f in zip(ids, host):
            self.cache.save(vid, f)
        self.written += len(ids)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_pending()
        self.cache.dir.mkdir(parents=True, exist_ok=True)
        part = self.cache.dir / f".failed.rank{trainer.global_rank}.txt"
        write_text_atomic(part, format_failures(self.failures))
        trainer.strategy.barrier("failure_reports")
        if trainer.is_global_zero:
            merged = []
            for rank in range(trainer.world_size):
                path = self.cache.dir / f".failed.rank{rank}.txt"
                if path.exists():
                    merged += parse_failures(path.read_text(encoding="utf-8"))
                    path.unlink()
            self.merged_failures = sorted(set(merged))
            self.cache.write_failures(self.merged_failures)  # none: every clip listed before is now extracted


def remove_stale_temp_files(cache: FeatureCache) -> int:
    """Delete the temporary files a killed run left behind (`FeatureCache.save` writes `.<id>.<pid>.tmp.npy`)."""
    if not cache.dir.is_dir():
        return 0
    stale = list(cache.dir.glob(".*.tmp.npy"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def _on_gpu(accelerator: str) -> bool:
    """Whether Lightning's `accelerator` setting runs on a GPU: `auto` follows the one device rule
    (`captioner.inference.resolve_device`)."""
    from captioner.device import resolve_device

    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and resolve_device("auto").type == "cuda")


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: fp16 mixed precision on GPU (features are stored in float16 anyway), full fp32 on CPU. A spec whose
    `precision` is `bf16` runs its CNN under bfloat16 autocast whatever this says (`FrameEncoder.encode_cropped`)."""
    if precision != "auto":
        return precision
    return "16-mixed" if _on_gpu(accelerator) else "32-true"


def run_extraction(
    spec: FeatureSpec,
    items: Sequence[tuple[str, str]],
    cache: FeatureCache,
    accelerator: str = "auto",
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str = "auto",
    batch_size: int = 16,
    num_workers: int = 4,
    progress: bool = True,
    callbacks: Sequence[pl.Callback] = (),
) -> Optional[list[tuple[str, str]]]:
    """Encode every clip of `items` not yet in `cache` with `trainer.predict`, saving each as its batch ends.

    The same code runs on one CPU, one GPU, N GPUs or N nodes: with more than one process, `strategy="auto"`
    becomes DDP, each process encodes its shard of the clips and writes their files.

    Returns:
        On global rank 0, `(video id, reason)` of every clip no process could read (also in
        `<cache dir>/failed.txt`); `None` on the other ranks.
    """
    if strategy == "auto" and isinstance(devices, int) and devices * num_nodes > 1:
        strategy = "ddp"
    on_gpu = _on_gpu(accelerator)
    writer = FeatureWriter(cache)
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
        precision=resolve_precision(precision, accelerator), logger=False, enable_checkpointing=False,
        enable_progress_bar=progress, enable_model_summary=False, callbacks=[writer, *callbacks],
        benchmark=on_gpu or None,  # fixed input shapes: let cuDNN pick its fastest kernels
        default_root_dir=str(cache.dir),
    )
    model = FeatureExtractor(spec)
    data = ExtractionData(items, cache, model.preprocessing, batch_size, num_workers, pin_memory=on_gpu)
    trainer.predict(model, datamodule=data, return_predictions=False)
    return writer.merged_failures if trainer.is_global_zero else None
