"""The project's annotation format and the datasets built on cached features."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from captioner.data.features import FeatureCache
from captioner.data.vocab import Vocabulary

SPLITS = ("train", "val", "test")


@dataclass
class Clip:
    """One video of an annotation file: `path` is relative to the file's folder unless absolute."""

    id: str
    path: str
    split: str
    captions: list[str]
    extra: dict = field(default_factory=dict)


def load_annotations(path: str | os.PathLike) -> list[Clip]:
    """Read `annotations.json`: `{"videos": [{"id", "path", "split", "captions": [...], ...}, ...]}`.

    Raises:
        ValueError: the file is not valid JSON or lacks a required field (the message says where).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        raise ValueError(f"{path}: expected an object with a 'videos' list")
    clips = []
    for i, v in enumerate(data["videos"]):
        missing = [k for k in ("id", "path", "split", "captions") if k not in v]
        if missing:
            raise ValueError(f"{path}: video #{i} lacks {', '.join(missing)}")
        if v["split"] not in SPLITS:
            raise ValueError(f"{path}: video {v['id']!r} has split {v['split']!r}, expected one of {SPLITS}")
        extra = {k: val for k, val in v.items() if k not in ("id", "path", "split", "captions")}
        full = v["path"] if os.path.isabs(v["path"]) else str(path.parent / v["path"])
        clips.append(Clip(str(v["id"]), full, v["split"], [str(c) for c in v["captions"]], extra))
    return clips


class CaptionPairs(Dataset):
    """Training items: one per (clip, caption) pair -> `(features (T, D), caption ids (S,))`."""

    def __init__(self, clips: list[Clip], cache: FeatureCache, vocab: Vocabulary, max_len: Optional[int] = None):
        self.cache = cache
        self.pairs = [(c.id, vocab.encode(cap, max_len)) for c in clips for cap in c.captions]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        vid, ids = self.pairs[i]
        return self.cache.load(vid), torch.tensor(ids)


class ClipReferences(Dataset):
    """Evaluation items: one per clip -> `(index, features (T, D), reference captions, extra annotations)`."""

    def __init__(self, clips: list[Clip], cache: FeatureCache):
        self.clips, self.cache = clips, cache

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        c = self.clips[i]
        return i, self.cache.load(c.id), c.captions, c.extra


def collate_pairs(batch) -> dict:
    feats, caps = zip(*batch)
    return {"feats": torch.stack(feats), "captions": pad_sequence(caps, batch_first=True, padding_value=0)}


def collate_clips(batch) -> dict:
    idx, feats, refs, extra = zip(*batch)
    return {"index": torch.tensor(idx), "feats": torch.stack(feats), "references": list(refs), "extra": list(extra)}
