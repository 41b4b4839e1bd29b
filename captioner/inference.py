"""Captioning video files: the device to run on, and the one loop that reads and captions files in batches."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, Union

from captioner.video import VideoReadError, list_videos

if TYPE_CHECKING:
    import torch

PathLike = Union[str, os.PathLike]
log = logging.getLogger(__name__)

PROGRESS_MIN_VIDEOS = 8  # with `progress=None`, show a bar above this many videos (and only on a terminal)


@dataclass(frozen=True)
class CaptionResult:
    """One video's outcome: a caption, or the reason it could not be captioned.

    `score`, `familiarity` and `in_domain` are those of `captioner.models.captioner.ScoredCaption`
    (`familiarity`/`in_domain` are `None` for a checkpoint without a summary of its training videos).
    """

    video: str
    caption: Optional[str] = None
    error: Optional[str] = None
    score: Optional[float] = None
    familiarity: Optional[float] = None
    in_domain: Optional[bool] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        """`{"video", "caption", "score"[, "familiarity", "in_domain"]}`, or `{"video", "error"}` for a failure (the
        `--json` record)."""
        if not self.ok:
            return {"video": self.video, "error": self.error}
        record = {"video": self.video, "caption": self.caption, "score": self.score}
        if self.familiarity is not None:
            record.update(familiarity=self.familiarity, in_domain=self.in_domain)
        return record


def expand_video_paths(inputs: Iterable[PathLike]) -> list[Path]:
    """Files as given; each directory replaced by the video files directly inside it, sorted by name.

    Raises:
        OSError: a directory cannot be listed.
    """
    return [Path(path) for path, _ in _work_items(inputs, strict=True)]


def _work_items(inputs: Iterable[PathLike], strict: bool = False) -> list[tuple[str, Optional[str]]]:
    """(video path, error known before reading) for every input, directories expanded, in input order.

    `strict`: a directory that cannot be listed raises `OSError`, one without videos adds nothing; otherwise each
    is an item with its error.
    """
    items: list[tuple[str, Optional[str]]] = []
    for item in inputs:
        if not Path(item).is_dir():
            items.append((str(item), None))
            continue
        try:
            videos = list_videos(item)
        except OSError as err:
            if strict:
                raise
            items.append((str(item), f"cannot list directory ({err.strerror or err})"))
            continue
        if not videos and not strict:
            items.append((str(item), "directory contains no video files"))
        items += [(str(v), None) for v in videos]
    return items


def caption_videos(
    model,
    inputs: Iterable[PathLike],
    batch_size: int = 8,
    num_frames: Optional[int] = None,
    seek: Optional[str] = None,
    progress: Optional[bool] = False,
    on_clip: Optional[Callable[[str, "torch.Tensor"], None]] = None,
    strict: bool = False,
    **generate_kwargs,
) -> Iterator[CaptionResult]:
    """Caption video files and directories of them, yielding one result per video in input order.

    Each clip is read on its own, so a missing, foreign, truncated or empty file becomes a failed result
    (its `error` says why) while the readable clips of the same batch go through the encoder and decoder
    together. Results are deterministic for a given model and `batch_size`.

    Args:
        model: a `VideoCaptioner` (see `VideoCaptioner.from_checkpoint`).
        inputs: video files and/or directories (a directory stands for its video files, sorted by name).
        batch_size: clips encoded and decoded together.
        num_frames: frames sampled per clip instead of the checkpoint's own.
        seek: `"exact"`, or `"keyframe"`: each sample snapped to the nearest keyframe, approximate and much faster
            on long videos (see `read_frames`); default: the checkpoint's.
        progress: tqdm bar on stderr; `None` shows it for more than `PROGRESS_MIN_VIDEOS` videos on a terminal.
        on_clip: called with (path, frames `(T, H, W, 3)` uint8) for each clip read (the HTML report's strips).
        strict: raise at the first file that cannot be read instead of yielding its failure (`VideoCaptioner.caption`);
            a directory without videos then adds nothing.
        generate_kwargs: `beam_size`, `max_len`, `length_penalty`, `no_repeat_ngram`; default: the checkpoint's.

    Raises:
        WeightsUnavailableError: the backbone's weights are not on this machine and cannot be downloaded (raised
            at the first result, before any video is read).
        VideoReadError, OSError: with `strict`, the first file that cannot be read, or directory listed.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    model.encoder  # built (its weights loaded) before any video is read: a WeightsUnavailableError is no file's fault
    items = _work_items(inputs, strict)
    if progress is None:
        progress = len(items) > PROGRESS_MIN_VIDEOS and sys.stderr.isatty()
    with tqdm(total=len(items), desc="Captioning", unit="video", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            results: list[Optional[CaptionResult]] = [None] * len(chunk)
            clips = {}
            for i, (path, error) in enumerate(chunk):
                if error is not None:
                    results[i] = CaptionResult(path, error=error)
                    continue
                try:
                    clips[i] = model.read_clip(path, num_frames, seek)
                except VideoReadError as err:
                    if strict:
                        raise
                    results[i] = CaptionResult(path, error=err.reason)
                    continue
                except Exception as err:  # a decoder library failing in a way we did not foresee: still per file
                    if strict:
                        raise
                    log.debug("reading %s failed", path, exc_info=True)
                    results[i] = CaptionResult(path, error=f"could not be read ({type(err).__name__}: {err})")
                    continue
                if on_clip is not None:
                    on_clip(path, clips[i])
            if clips:
                captions = model.caption_clips(list(clips.values()), with_scores=True, **generate_kwargs)
                for i, c in zip(clips, captions):
                    results[i] = CaptionResult(chunk[i][0], caption=c.text, score=c.score, familiarity=c.familiarity,
                                               in_domain=c.in_domain)
            bar.update(len(chunk))
            yield from results
