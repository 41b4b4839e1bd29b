"""The on-disk feature cache: what names it (`FeatureSpec`), one `.npy` of features per clip, the failure report."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from captioner.config import FeatureSpec
from captioner.io import atomic_write, write_text_atomic

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
REPORT_NAME = "failed.txt"  # in the cache folder: the clips that could not be read, `<id>\t<reason>` per line


def format_failures(failures: Sequence[tuple[str, str]]) -> str:
    """`(id, reason)` pairs -> report lines (a reason is kept on one line)."""
    return "".join(f"{vid}\t{' '.join(err.split())}\n" for vid, err in failures)


def parse_failures(text: str) -> list[tuple[str, str]]:
    return [tuple(line.split("\t", 1)) for line in text.splitlines() if "\t" in line]  # type: ignore[misc]


class FeatureCache:
    """Folder `root/<spec.key>/` holding `<video id>.npy` arrays `(T, D)` in float16.

    Each file is written to a temporary name and renamed, so a crash never leaves a partial entry.
    Files are read one at a time, so the cache can be far larger than memory. `failed.txt` in the same folder
    lists the clips that could not be read.
    """

    def __init__(self, root: str | os.PathLike, spec: FeatureSpec):
        self.spec = spec
        self.dir = Path(root) / spec.key

    @classmethod
    def of_dataset(cls, features_dir: str | os.PathLike, data_dir: str | os.PathLike, spec: FeatureSpec
                   ) -> "FeatureCache":
        """The cache of the dataset in `data_dir`: `<features_dir>/<data_dir name>/<spec.key>/` (one folder per
        dataset: clip ids of different datasets may collide). Training, extraction and evaluation all use it."""
        return cls(Path(features_dir) / Path(data_dir).name, spec)

    def path(self, video_id: str) -> Path:
        """`<dir>/<id>.npy`; an id that is not a plain file name (`../x`, `a b`, `vidéo`, `.hidden`) is made one,
        with a hash of the id added so that two such ids never share a file. No id can point outside `dir`."""
        name = _SAFE.sub("_", video_id).lstrip(".")
        if name != video_id:
            name = f"{name}~{hashlib.sha1(video_id.encode('utf-8')).hexdigest()[:10]}"
        return self.dir / f"{name}.npy"

    def has(self, video_id: str) -> bool:
        return self.path(video_id).is_file()

    def load(self, video_id: str) -> torch.Tensor:
        """Features `(T, D)` as float32."""
        return torch.from_numpy(np.load(self.path(video_id)).astype(np.float32))

    def save(self, video_id: str, feats: torch.Tensor) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path(video_id)
        # the temporary name `remove_stale_temp_files` globs for: `.<stem>.<pid>.tmp.npy`
        with atomic_write(final, "wb", temp_name=f".{final.stem}.{os.getpid()}.tmp.npy") as f:
            np.save(f, feats.detach().to("cpu", torch.float16).numpy())

    @property
    def report_path(self) -> Path:
        return self.dir / REPORT_NAME

    def failures(self) -> list[tuple[str, str]]:
        """`(id, reason)` of the clips listed in the report as unreadable; empty without a report."""
        path = self.report_path
        return parse_failures(path.read_text(encoding="utf-8")) if path.exists() else []

    def write_failures(self, failures: Sequence[tuple[str, str]]) -> None:
        """Replace the report with `failures`, atomically; with none, remove it."""
        if failures:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.report_path, format_failures(failures))
        else:
            self.report_path.unlink(missing_ok=True)
