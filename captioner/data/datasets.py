"""The project's annotation format and the datasets built on cached features."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from captioner.features.cache import FeatureCache
from captioner.vocab import Vocabulary

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)
_WORD = re.compile(r"\w")


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

    Captions with no word (empty, or only punctuation) are left out, and so are clips left with no caption;
    both are reported with a warning that names them, never dropped silently.

    Raises:
        ValueError: the file is not valid JSON, an entry lacks a required field or has one of the wrong type,
            or two entries share an id (the message says where).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        raise ValueError(f"{path}: expected an object with a 'videos' list")
    clips, seen = [], {}
    empty_captions: list[str] = []
    no_caption: list[str] = []
    for i, v in enumerate(data["videos"]):
        if not isinstance(v, dict):
            raise ValueError(f"{path}: video #{i} is a {type(v).__name__}, expected an object")
        missing = [k for k in ("id", "path", "split", "captions") if k not in v]
        if missing:
            raise ValueError(f"{path}: video #{i} lacks {', '.join(missing)}")
        vid = v["id"]
        if not isinstance(vid, (str, int)) or isinstance(vid, bool) or not str(vid).strip() \
                or any(ch in str(vid) for ch in "\t\n\r"):
            raise ValueError(f"{path}: video #{i} has id {vid!r}, expected a non-empty name on one line")
        vid = str(vid)
        if vid in seen:
            raise ValueError(f"{path}: videos #{seen[vid]} and #{i} share the id {vid!r} (ids name feature files)")
        seen[vid] = i
        if not isinstance(v["path"], str) or not v["path"]:
            raise ValueError(f"{path}: video {vid!r} has path {v['path']!r}, expected a file name")
        if v["split"] not in SPLITS:
            raise ValueError(f"{path}: video {vid!r} has split {v['split']!r}, expected one of {SPLITS}")
        captions = v["captions"]
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"{path}: video {vid!r} has captions {str(captions)[:60]!r}, expected a list of strings")
        kept = [c for c in captions if _WORD.search(c)]  # what `tokenize` keeps: tokens with a letter or digit
        empty_captions += [f"{vid!r} #{j}: {c!r}" for j, c in enumerate(captions) if not _WORD.search(c)]
        if not kept:
            no_caption.append(vid)
            continue
        extra = {k: val for k, val in v.items() if k not in ("id", "path", "split", "captions")}
        full = v["path"] if os.path.isabs(v["path"]) else str(path.parent / v["path"])
        clips.append(Clip(vid, full, v["split"], kept, extra))
    if empty_captions:
        log.warning("%s: %d captions with no word are left out (first: %s)", path, len(empty_captions),
                    empty_captions[0])
    if no_caption:
        log.warning("%s: %d clips with no usable caption are left out: %s", path, len(no_caption),
                    ", ".join(no_caption[:5]) + (" ..." if len(no_caption) > 5 else ""))
    return clips


class CaptionPairs(Dataset):
    """Training items: one per (clip, caption) pair -> `(features (T, D), caption ids (S,))`.

    With `in_memory`, the clips' features are read once, on first use, into one float16 tensor `(N, T, D)`, and
    the DataLoader fetches a whole batch in one call (`__getitems__`): one gather instead of one `.npy` file read
    per item. Reading and collating items one by one cost more than the decoder's own step on a GPU.

    Args:
        in_memory: hold the features in memory (2 bytes per number); `False` reads each item's file when it is
            fetched, for caches larger than memory.
    """

    def __init__(self, clips: list[Clip], cache: FeatureCache, vocab: Vocabulary, max_len: Optional[int] = None,
                 in_memory: bool = False):
        self.cache, self.in_memory = cache, in_memory
        self.pairs = []
        self.truncated = 0  # captions longer than `max_len` words, cut to their first `max_len` words
        for c in clips:
            for cap in c.captions:
                ids = vocab.encode(cap)  # [<bos>, w1, ..., wn, <eos>]
                if max_len and len(ids) - 2 > max_len:
                    ids = ids[: max_len + 1] + [vocab.eos_id]  # what vocab.encode(cap, max_len) gives
                    self.truncated += 1
                self.pairs.append((c.id, ids))
        self._ids = [torch.tensor(ids) for _, ids in self.pairs]
        self._feats: Optional[torch.Tensor] = None  # (N, T, D) float16, loaded on first use when in_memory
        self._rows: Optional[torch.Tensor] = None  # pair -> row of `_feats`

    def __len__(self) -> int:
        return len(self.pairs)

    def load_features(self) -> torch.Tensor:
        """Read every clip's features once into one float16 tensor `(N, T, D)` (done on first use)."""
        if self._feats is None:
            order = list(dict.fromkeys(vid for vid, _ in self.pairs))
            row = {vid: i for i, vid in enumerate(order)}
            first = np.load(self.cache.path(order[0]))
            self._feats = torch.empty((len(order), *first.shape), dtype=torch.float16)  # filled in place: no 2x peak
            for i, vid in enumerate(order):
                self._feats[i] = torch.from_numpy(first if i == 0 else np.load(self.cache.path(vid)))
            self._rows = torch.tensor([row[vid] for vid, _ in self.pairs])
        return self._feats

    def __getitem__(self, i: int):
        vid, _ = self.pairs[i]
        if self.in_memory:
            return self.load_features()[self._rows[i]].float(), self._ids[i]
        return self.cache.load(vid), self._ids[i]

    def __getitems__(self, indices: list[int]):
        """A whole batch: `{"feats": (B, T, D), "captions": (B, S)}` in memory, else the list of its items."""
        if not self.in_memory:
            return [self[i] for i in indices]
        feats = self.load_features()[self._rows[indices]].float()  # one gather: (B, T, D)
        return {"feats": feats, "captions": _pad([self._ids[i] for i in indices])}


def _pad(caps: list[torch.Tensor]) -> torch.Tensor:
    return pad_sequence(caps, batch_first=True, padding_value=0)  # 0 = <pad>


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
    """`(features, caption ids)` items -> `{"feats": (B, T, D), "captions": (B, S)}`; a batch that
    `CaptionPairs.__getitems__` already built passes through."""
    if isinstance(batch, dict):
        return batch
    feats, caps = zip(*batch)
    return {"feats": torch.stack(feats), "captions": _pad(list(caps))}


def collate_clips(batch) -> dict:
    idx, feats, refs, extra = zip(*batch)
    return {"index": torch.tensor(idx), "feats": torch.stack(feats), "references": list(refs), "extra": list(extra)}
