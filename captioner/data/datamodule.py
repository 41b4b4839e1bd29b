"""LightningDataModule for captioning: prepare the clips, cache their CNN features, serve features and captions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from captioner.data.datasets import CaptionPairs, Clip, ClipReferences, collate_clips, collate_pairs, load_annotations
from captioner.data.features import FeatureCache, FeatureSpec, extract_features
from captioner.data.vocab import Vocabulary

log = logging.getLogger(__name__)


class CaptioningDataModule(pl.LightningDataModule):
    """Clips listed in `<data_dir>/annotations.json`, encoded once by a frozen CNN and cached on disk.

    Args:
        data_dir: folder with `annotations.json` (see data/README.md) and the clips it lists.
        synthetic: when `data_dir` has no annotations yet, generate the embedded synthetic dataset there.
        num_train_clips, num_val_clips, num_test_clips, synthetic_seed: size and seed of the synthetic set.
        features_dir: root of the feature cache (one sub-folder per backbone, weights and frame count).
        backbone: CNN name, `efficientnet_lite0` (offline weights) or any torchvision classification model.
        weights: torchvision weights enum name (`DEFAULT`, `IMAGENET1K_V2`...); `null` for random weights.
        num_frames: frames sampled uniformly from each clip.
        image_size: CNN input size instead of the weights' own (e.g. 160 for the 160x160 synthetic clips).
        spatial_grid: pool the CNN's last feature map over a g x g grid (D = C * g * g) to keep positions.
        min_word_count: words seen fewer times in the training captions become `<unk>`.
        max_caption_len: training captions are cut to this many words.
        batch_size: training batch size (caption pairs); evaluation batches hold clips.
        num_workers: DataLoader workers (video decoding during extraction, feature loading during training).
        extract_batch_size: clips per CNN batch during feature extraction.
        extract_device: device for feature extraction (`auto`: CUDA when available).
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
        backbone: str = "efficientnet_lite0",
        weights: Optional[str] = "DEFAULT",
        num_frames: int = 8,
        image_size: Optional[int] = None,
        spatial_grid: int = 1,
        min_word_count: int = 1,
        max_caption_len: int = 20,
        batch_size: int = 64,
        num_workers: int = 0,
        extract_batch_size: int = 16,
        extract_device: str = "auto",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.spec = FeatureSpec(backbone=backbone, weights=weights, num_frames=num_frames, image_size=image_size,
                                spatial_grid=spatial_grid)
        # one cache per dataset folder: clip ids of different datasets may collide
        self.cache = FeatureCache(Path(features_dir) / self.data_dir.name, self.spec)
        self.vocab: Optional[Vocabulary] = None
        self.splits: dict[str, list[Clip]] = {}

    @property
    def annotations_path(self) -> Path:
        return self.data_dir / "annotations.json"

    @property
    def feature_dim(self) -> int:
        return self.cache.load(self.splits["train"][0].id).shape[-1]

    def prepare_data(self) -> None:
        """Generate the synthetic set if needed, then cache the features of every clip (runs on one process)."""
        hp = self.hparams
        if not self.annotations_path.exists():
            if not hp.synthetic:
                raise FileNotFoundError(f"{self.annotations_path} not found (see data/README.md to prepare a dataset)")
            from captioner.data.synthetic import generate_synthetic_dataset

            generate_synthetic_dataset(self.data_dir, hp.num_train_clips, hp.num_val_clips, hp.num_test_clips,
                                       seed=hp.synthetic_seed)
        elif hp.synthetic:
            self._check_synthetic_matches()
        clips = load_annotations(self.annotations_path)
        report = self.cache.dir / "failed.txt"
        known_bad = {line.split("\t", 1)[0] for line in report.read_text().splitlines()} if report.exists() else set()
        todo = [c for c in clips if not self.cache.has(c.id) and c.id not in known_bad]
        if known_bad:
            log.warning("%d clips listed in %s as unreadable are left out (delete that file to retry them)",
                        len(known_bad), report)
        if not todo:
            return
        import torch

        device = hp.extract_device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        encoder = self.spec.build_encoder()
        failures = extract_features(encoder, [(c.id, c.path) for c in todo], self.cache,
                                    batch_size=hp.extract_batch_size, num_workers=hp.num_workers, device=device)
        if failures:
            with open(report, "a", encoding="utf-8") as f:
                f.writelines(f"{vid}\t{err}\n" for vid, err in failures)
            log.warning("%d clips could not be read and are left out (listed in %s)", len(failures), report)

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
            raise ValueError(f"{self.data_dir} holds a synthetic set generated with other settings ({detail}); "
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
        ds = CaptionPairs(self.splits["train"], self.cache, self.vocab, self.hparams.max_caption_len)
        return DataLoader(ds, batch_size=self.hparams.batch_size, shuffle=True, num_workers=self.hparams.num_workers,
                          collate_fn=collate_pairs, drop_last=len(ds) > self.hparams.batch_size,
                          persistent_workers=self.hparams.num_workers > 0)

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(ClipReferences(self.splits[split], self.cache), batch_size=self.hparams.batch_size,
                          num_workers=self.hparams.num_workers, collate_fn=collate_clips)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
