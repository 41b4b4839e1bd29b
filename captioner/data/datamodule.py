"""LightningDataModule for captioning: prepare the clips, cache their CNN features, serve features and captions."""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator, Literal, Optional

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from captioner.config import FeatureSpec
from captioner.data.datasets import CaptionPairs, Clip, ClipReferences, collate_clips, collate_pairs, load_annotations
from captioner.errors import DataNotFoundError, SettingsError
from captioner.features.cache import FeatureCache
from captioner.vocab import Vocabulary

log = logging.getLogger(__name__)


class ResumableShuffleSampler(DistributedSampler):
    """Shuffles each epoch from `(seed, epoch)` alone, as `DistributedSampler` does, and can resume part-way.

    The order never depends on the global random state, so a run resumed from a mid-epoch checkpoint trains on
    the rest of that epoch's batches in the same order as an uninterrupted run (`CaptioningDataModule.state_dict`
    records how far the epoch got). One process is `num_replicas=1`; under DDP Lightning keeps this sampler (it
    is a `DistributedSampler` already) and, as for any sampler, calls `set_epoch` at every epoch.
    """

    def __init__(self, dataset, seed: int = 0):
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(dataset, num_replicas=dist.get_world_size() if distributed else 1,
                         rank=dist.get_rank() if distributed else 0, shuffle=True, seed=seed)
        self._skip: Optional[tuple[int, int]] = None  # (epoch, samples of it already trained on)

    def resume(self, epoch: int, samples_seen: int) -> None:
        """The next pass over `epoch` starts after its first `samples_seen` samples (of this process)."""
        self.set_epoch(epoch)
        self._skip = (epoch, samples_seen)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._skip is not None and self._skip[0] == self.epoch:
            indices = indices[self._skip[1]:]
            self._skip = None
        return iter(indices)


class CaptioningDataModule(pl.LightningDataModule):
    """Clips listed in `<data_dir>/annotations.json`, encoded once by a frozen CNN and cached on disk.

    Args:
        data_dir: folder with `annotations.json` (see data/README.md) and the clips it lists.
        synthetic: when `data_dir` has no annotations yet, generate the embedded synthetic dataset there.
        num_train_clips, num_val_clips, num_test_clips, synthetic_seed: size and seed of the synthetic set.
        features_dir: root of the feature cache (one sub-folder per `features.key`).
        features: what the cached features depend on (`FeatureSpec`: backbone, weights, num_frames, image_size,
            spatial_grid, seek), e.g. `--data.features.num_frames 16`; recorded in the checkpoint, so captioning
            encodes frames the same way. A dict of its fields is taken too (and is what the hyper-parameters hold).
        min_word_count: words seen fewer times in the training captions become `<unk>`.
        max_caption_len: training captions are cut to this many words.
        batch_size: training batch size (caption pairs); evaluation batches hold clips.
        num_workers: DataLoader workers: video decoding during extraction, feature loading during evaluation, and
            during training when `features_in_memory` is false.
        features_in_memory: hold the training features in memory (float16, N x T x D) and gather each batch in
            one call, in the main process; false reads one `.npy` per caption pair (caches larger than memory).
        extract_batch_size: clips per CNN batch during feature extraction.
        extract_device: device for feature extraction (`auto`: CUDA when available).
        train_items: what a training batch holds: `pairs` (one (clip, caption) pair per item, for cross-entropy) or
            `clips` (one clip per item with all its references, as evaluation batches: for self-critical training).
    """

    def __init__(
        self,
        data_dir: str = "data/synthetic",
        synthetic: bool = True,
        num_train_clips: int = 600,
        num_val_clips: int = 60,
        num_test_clips: int = 100,
        synthetic_seed: int = 0,
        features_dir: str = "data/features",
        features: FeatureSpec = FeatureSpec(),
        min_word_count: int = 1,
        max_caption_len: int = 20,
        batch_size: int = 64,
        num_workers: int = 0,
        features_in_memory: bool = True,
        extract_batch_size: int = 16,
        extract_device: str = "auto",
        train_items: Literal["pairs", "clips"] = "pairs",
    ):
        super().__init__()
        self.spec = features if isinstance(features, FeatureSpec) else FeatureSpec(**features)
        # saved as a plain dict (save_hyperparameters reads this local): checkpoints stay loadable with weights_only
        features = dataclasses.asdict(self.spec)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.cache = FeatureCache.of_dataset(features_dir, self.data_dir, self.spec)
        self.vocab: Optional[Vocabulary] = None
        self.splits: dict[str, list[Clip]] = {}
        self.train_sampler: Optional[ResumableShuffleSampler] = None
        self._resume_state: Optional[dict] = None

    @property
    def annotations_path(self) -> Path:
        return self.data_dir / "annotations.json"

    @property
    def feature_dim(self) -> int:
        return self.cache.load(self.splits["train"][0].id).shape[-1]

    def prepare_data(self) -> None:
        """Generate the synthetic set if needed, then cache the features of every clip (runs on one process).

        The global random state is the same after it as before, whether there was work to do or not: extraction's
        DataLoader draws from it, and the model, built afterwards from the seeded state, would otherwise start from
        other weights in a first run than in a rerun on the cached features.
        """
        from pytorch_lightning.utilities.seed import isolate_rng

        with isolate_rng():
            self._prepare_data()

    def _prepare_data(self) -> None:
        hp = self.hparams
        if not self.annotations_path.exists():
            if not hp.synthetic:
                raise self._not_found()
            from captioner.data.synthetic import generate_synthetic_dataset

            generate_synthetic_dataset(self.data_dir, hp.num_train_clips, hp.num_val_clips, hp.num_test_clips,
                                       seed=hp.synthetic_seed)
        elif hp.synthetic:
            self._check_synthetic_matches()
        clips = load_annotations(self.annotations_path)
        listed = self.cache.failures()
        known_bad = {vid for vid, _ in listed}
        todo = [c for c in clips if not self.cache.has(c.id) and c.id not in known_bad]
        if known_bad:
            log.warning("%d clips listed in %s as unreadable are left out (delete that file to retry them)",
                        len(known_bad), self.cache.report_path)
        if not todo:
            return
        self._announce_extraction(len(todo), len(clips))
        from captioner.device import resolve_device
        from captioner.features.extract import extract_in_process

        failures = extract_in_process(self.spec, [(c.id, c.path) for c in todo], self.cache,
                                      batch_size=hp.extract_batch_size, num_workers=hp.num_workers,
                                      device=resolve_device(hp.extract_device))
        if failures:
            self.cache.write_failures(listed + failures)
            log.warning("%d clips could not be read and are left out (listed in %s)", len(failures),
                        self.cache.report_path)

    def check_ready(self) -> None:
        """What can be checked without any work, before training starts its processes: the dataset is there (or
        will be generated) and, when clips are left to encode, the backbone's weights are (`ensure_weights`).
        Bad names were refused when the spec was made.

        Raises:
            DataNotFoundError: `data_dir` has no `annotations.json` and `synthetic` is off.
            WeightsUnavailableError: clips are left to encode, and the weights are neither in torch hub's cache nor
                downloadable.
        """
        if not self.annotations_path.exists():
            if not self.hparams.synthetic:
                raise self._not_found()
        else:
            try:
                clips = load_annotations(self.annotations_path)
            except (OSError, ValueError):
                return  # prepare_data reports a broken file, among its other checks
            known_bad = {vid for vid, _ in self.cache.failures()}
            if all(self.cache.has(c.id) or c.id in known_bad for c in clips):
                return  # training reads the cache alone: no weights needed
        self.ensure_weights()

    def ensure_weights(self) -> None:
        """Have the backbone's weights in torch hub's cache, downloading them if need be: one line, naming the
        offline backbones, when they cannot be had, instead of an error in the middle of the first extraction.

        Raises:
            WeightsUnavailableError: not in torch hub's cache, and the download failed.
        """
        from captioner.config import OFFLINE_BACKBONE
        from captioner.models.encoder import ensure_weights
        from captioner.weights import OFFLINE_WEIGHTS

        offline = [(w.backbone, w.weights) for w in OFFLINE_WEIGHTS.values()] + [(OFFLINE_BACKBONE, "DEFAULT")]
        ensure_weights(self.spec.backbone, self.spec.weights,
                       alternative="or use a backbone whose weights come with the package, no download needed: "
                                   + ", or ".join(f"--data.features.backbone {b} --data.features.weights {w}"
                                                  for b, w in offline))

    def _not_found(self) -> DataNotFoundError:
        return DataNotFoundError(f"{self.annotations_path} not found (see data/README.md to prepare a dataset, or "
                                 f"check --data.data_dir)")

    def extract_command(self) -> str:
        """The `captioner extract` command that fills this DataModule's feature cache (the same `--data.*` flags)."""
        import shlex

        null = lambda v: "null" if v is None else str(v)  # noqa: E731
        args = ["captioner", "extract", "--data.data_dir", str(self.data_dir),
                "--data.features_dir", str(self.hparams.features_dir)]
        for field in dataclasses.fields(FeatureSpec):
            args += [f"--data.features.{field.name}", null(getattr(self.spec, field.name))]
        return shlex.join(args)

    def _announce_extraction(self, todo: int, total: int) -> None:
        """Say which cache training fills, which others this dataset has, and how to fill it apart: encoding a
        dataset takes minutes to hours on real videos, and a changed backbone or frame count must not do it
        unannounced."""
        root = self.cache.dir.parent
        others = sorted(p.name for p in root.iterdir() if p.is_dir() and p != self.cache.dir) if root.is_dir() else []
        log.warning("%d of %d clips have no features in %s: extracting them now, in this process", todo, total,
                    self.cache.dir)
        log.warning("other feature caches of %s in %s: %s", self.data_dir.name, root, ", ".join(others) or "none")
        log.warning("to extract apart instead (1 CPU to N GPUs), stop and run: %s", self.extract_command())

    def _check_synthetic_matches(self) -> None:
        import json

        hp = self.hparams
        made = json.loads(self.annotations_path.read_text()).get("generator")
        if made is None:
            return  # not a generated set: a real dataset in data_dir wins
        wanted = dict(num_train=hp.num_train_clips, num_val=hp.num_val_clips, num_test=hp.num_test_clips,
                      seed=hp.synthetic_seed)
        differs = {k: (made.get(k), v) for k, v in wanted.items() if made.get(k) != v}
        if differs:
            detail = ", ".join(f"{k}: has {a}, asked {b}" for k, (a, b) in differs.items())
            raise SettingsError(f"{self.data_dir} holds a synthetic set generated with other settings ({detail}); "
                             f"delete that folder or choose another --data.data_dir")

    def setup(self, stage: Optional[str] = None) -> None:
        clips = load_annotations(self.annotations_path)
        missing = [c.id for c in clips if not self.cache.has(c.id)]
        if missing:
            log.warning("%d clips have no cached features and are left out (first: %s)", len(missing), missing[0])
        self.splits = {s: [c for c in clips if c.split == s and self.cache.has(c.id)] for s in ("train", "val", "test")}
        if not self.splits["train"]:
            raise ValueError(f"{self.annotations_path}: no training clip with features")
        self.vocab = Vocabulary.build((cap for c in self.splits["train"] for cap in c.captions),
                                      min_count=self.hparams.min_word_count)

    def train_dataloader(self) -> DataLoader:
        if self.hparams.get("train_items", "pairs") == "clips":
            return self._clips_loader()
        in_memory = self.hparams.get("features_in_memory", True)
        ds = CaptionPairs(self.splits["train"], self.cache, self.vocab, self.hparams.max_caption_len,
                          in_memory=in_memory)
        if ds.truncated:
            log.warning("%d of %d training captions are longer than max_caption_len=%d words and are cut to it",
                        ds.truncated, len(ds), self.hparams.max_caption_len)
        self.train_sampler = ResumableShuffleSampler(ds, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
        if self._resume_state:
            self.train_sampler.resume(**self._resume_state)
        # in memory, a batch is one gather: workers would only add a copy of it through shared memory
        workers = 0 if in_memory else self.num_workers
        if in_memory:
            warnings.filterwarnings("ignore", message=r"The 'train_dataloader' does not have many workers")
        # a generator of its own: each new iterator draws its workers' base seed from it, not from the global
        # random state, which only training steps then draw from (dropout); so the state saved in a checkpoint is
        # the state of the next training step, even across the epoch's end (see CaptioningSystem.on_train_start)
        return DataLoader(ds, batch_size=self.hparams.batch_size, sampler=self.train_sampler, num_workers=workers,
                          collate_fn=collate_pairs, drop_last=len(ds) > self.hparams.batch_size,
                          persistent_workers=workers > 0, pin_memory=self._on_gpu(),
                          generator=torch.Generator().manual_seed(self.train_sampler.seed))

    def _clips_loader(self) -> DataLoader:
        """Training batches of whole clips, `{"index", "feats", "references", "extra"}` (`index` into the training
        split), shuffled and resumable as the caption pairs are."""
        ds = ClipReferences(self.splits["train"], self.cache)
        self.train_sampler = ResumableShuffleSampler(ds, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
        if self._resume_state:
            self.train_sampler.resume(**self._resume_state)
        return DataLoader(ds, batch_size=self.hparams.batch_size, sampler=self.train_sampler,
                          num_workers=self.num_workers, collate_fn=collate_clips,
                          drop_last=len(ds) > self.hparams.batch_size, persistent_workers=self.num_workers > 0,
                          pin_memory=self._on_gpu(), generator=torch.Generator().manual_seed(self.train_sampler.seed))

    @property
    def num_workers(self) -> int:
        """`num_workers`, at most one per CPU there is (`usable_workers`): configs are written for big machines."""
        from captioner.features.extract import usable_workers

        return usable_workers(self.hparams.num_workers)

    def _on_gpu(self) -> bool:
        """Page-locked batches copy to a GPU asynchronously (Lightning moves them with `non_blocking`)."""
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def use_vocabulary(self, vocab: Vocabulary) -> None:
        """Encode the training captions with `vocab` (a checkpoint's, whose words its weights know) instead of the
        one built from them at `setup`; saved in this module's state, so a resumed run keeps it."""
        self.vocab = vocab

    def extra_scores(self, hypotheses: list[str], references: list[list[str]], extras: list[dict]) -> dict:
        """Scores this dataset adds to BLEU and CIDEr-D, from the clips' own annotations (`extras`): on the
        synthetic set, those of the clips whose truth depends on frame order (`synthetic.motion_scores`)."""
        from captioner.data.synthetic import motion_scores

        return motion_scores(hypotheses, references, extras)

    def state_dict(self) -> dict:
        """The vocabulary, and where training is in the current epoch (saved in every checkpoint), so a resumed run
        encodes captions as before and skips what it saw."""
        state = {"vocab": list(self.vocab.itos)} if self.vocab is not None else {}
        trainer = self.trainer
        if trainer is None or self.train_sampler is None or trainer.state.fn != "fit":
            return state
        epoch = trainer.current_epoch
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # trained on, in this epoch
        if batches >= trainer.num_training_batches:  # the epoch is over: the next one starts from its beginning
            epoch, batches = epoch + 1, 0
        return {**state, "train_sampler": {"epoch": epoch, "samples_seen": batches * self.hparams.batch_size}}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("vocab"):  # absent from checkpoints saved before issue 16
            self.use_vocabulary(Vocabulary(state_dict["vocab"]))
        self._resume_state = state_dict.get("train_sampler")
        if self._resume_state and self.train_sampler is not None:
            self.train_sampler.resume(**self._resume_state)
        if self._resume_state:
            # Lightning warns about any mid-epoch resume of a loader without state_dict(); ours resumes exactly
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(ClipReferences(self.splits[split], self.cache), batch_size=self.hparams.batch_size,
                          num_workers=self.num_workers, collate_fn=collate_clips,
                          generator=torch.Generator().manual_seed(0))  # as in train_dataloader

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
