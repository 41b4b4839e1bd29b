"""The facade: `VideoCaptioner` loads a trained model and captions video files; the one loop over videos."""

from __future__ import annotations

import itertools
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import torch

from captioner import video
from captioner.checkpointing import find_checkpoint, load_model, read_checkpoint
from captioner.config import GenerationConfig
from captioner.export import Pretrained, is_export_folder
from captioner.models.captioner import CaptionModel, ScoredCaption
from captioner.segments import (CNN_FRAMES, CUT_BATCH, SCENE_DETECTOR, SCENE_DETECTORS, SCENE_FPS, SCENES,
                                 SegmentReader, SegmentsSpec, feature_cuts, parse_segments, plan_segments,
                                 pyscenedetect_cuts, read_ahead, scene_detector)
from captioner.video import VideoReadError, list_videos

PathLike = Union[str, os.PathLike]
log = logging.getLogger(__name__)

PROGRESS_MIN_VIDEOS = 8  # with `progress=None`, show a bar above this many videos (and only on a terminal)


@dataclass(frozen=True)
class CaptionResult:
    """One video's outcome: a caption, or the reason it could not be captioned.

    `score`, `familiarity` and `in_domain` are those of `ScoredCaption` (`familiarity`/`in_domain` are `None` for a
    checkpoint without a summary of its training videos).
    """

    video: str
    caption: Optional[str] = None
    error: Optional[str] = None
    score: Optional[float] = None
    familiarity: Optional[float] = None
    in_domain: Optional[bool] = None
    start: Optional[float] = None  # seconds: a segment's (`caption_segments`); `None` for a whole video
    end: Optional[float] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def key(self) -> str:
        """The video, or for a segment the video with a W3C media fragment, `clip.mp4#t=10.000,20.000`."""
        return self.video if self.start is None else f"{self.video}#t={self.start:.3f},{self.end:.3f}"

    def to_dict(self) -> dict:
        """`{"video"[, "start", "end"], "caption", "score"[, "familiarity", "in_domain"]}`, or `{"video"[, "start",
        "end"], "error"}` for a failure (the `--json` record)."""
        timed = {} if self.start is None else {"start": round(self.start, 3), "end": round(self.end, 3)}
        if not self.ok:
            return {"video": self.video, **timed, "error": self.error}
        record = {"video": self.video, **timed, "caption": self.caption, "score": self.score}
        if self.familiarity is not None:
            record.update(familiarity=self.familiarity, in_domain=self.in_domain)
        return record


class VideoCaptioner(Pretrained, CaptionModel):
    """A trained captioner that reads video files: `VideoCaptioner.from_checkpoint("runs/synthetic").caption(paths)`.

    Everything of `CaptionModel` (`caption_frames`, `caption_features`, `generate`), plus loading (a checkpoint, a
    run folder, an exported folder: `from_pretrained`, `save_pretrained`), `read_clip` and
    the loop over video files (`caption`, `caption_results`).

    Attributes:
        checkpoint_path: the file it was loaded from (`None` when built in code).
        data_settings: the training data's settings the checkpoint recorded (`data_dir`, `features_dir`, ...).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.checkpoint_path: Optional[Path] = None
        self.data_settings: dict[str, Any] = {}

    @classmethod
    def from_checkpoint(cls, path: PathLike, map_location: str | torch.device = "cpu") -> "VideoCaptioner":
        """Load a checkpoint written by training (`*.ckpt`), safely (`weights_only=True`: no code runs), in eval mode.

        `path` may be a run folder: its best checkpoint is loaded (see `find_checkpoint`); the file is
        `model.checkpoint_path`.

        An exported folder (`captioner export`, `save_pretrained`) loads as `from_pretrained` does.

        Raises:
            CheckpointError: the file is missing, unreadable or not a captioner checkpoint.
        """
        if is_export_folder(path):
            return cls.from_pretrained(path, map_location)
        path = find_checkpoint(path)
        ckpt = read_checkpoint(path, map_location)
        model = load_model(ckpt, path, cls)
        model.checkpoint_path = path
        data = ckpt.get("datamodule_hyper_parameters")
        model.data_settings = dict(data) if isinstance(data, dict) else {}
        return model.eval().to(map_location)

    def read_clip(self, path: PathLike, num_frames: Optional[int] = None, seek: Optional[str] = None) -> torch.Tensor:
        """Frames `(T, H, W, 3)` of one video file, sampled as in training. Raises `VideoReadError`.

        Args:
            num_frames: frames to sample instead of the checkpoint's `spec.num_frames`.
            seek: `"exact"`, or `"keyframe"` for the approximate, faster sampling of long videos (see
                `read_frames`); default: the checkpoint's `spec.seek`.
        """
        return video.read_frames(path, num_frames or self.spec.num_frames, self.encoder.preprocessing.resize_size,
                                 seek=seek or self.spec.seek)  # looked up at each call: tests stand in for it

    def caption(self, paths: PathLike | Sequence[PathLike], batch_size: int = 8, seek: Optional[str] = None,
                with_scores: bool = False, **overrides: Any) -> list:
        """Captions for video files, in order; a directory stands for the video files inside it, sorted.

        `seek="keyframe"` samples the frames approximately, much faster on long videos (see `read_frames`).
        `with_scores=True` gives a `ScoredCaption` per video (see `caption_features`). `overrides`: generation
        settings (`beam_size=1`, ...) instead of `self.generation`'s.

        Raises `VideoReadError` naming the first unreadable file (`caption_results`, the loop this runs, instead
        reports each failure and captions the other files).
        """
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else paths
        results = self.caption_results(paths, batch_size, seek=seek, strict=True, **overrides)
        if not with_scores:
            return [r.caption for r in results]
        return [ScoredCaption(r.caption, r.score, r.familiarity, r.in_domain) for r in results]

    def caption_segments(self, path: PathLike, segments: SegmentsSpec = 10.0, batch_size: int = 2,
                         seek: Optional[str] = None, scenes: str = SCENE_DETECTOR,
                         **overrides: Any) -> list[CaptionResult]:
        """Timed captions of one video: a `CaptionResult` (`start`, `end` in seconds, `caption`, `score`,
        `familiarity`, `in_domain`) per segment, in order.

        Args:
            segments: fixed windows of this many seconds, or `"scenes"`: the shots between cuts (see
                `captioner.segments`: scenes shorter than `MIN_SEGMENT_SECONDS` join a neighbour, longer than
                `MAX_SCENE_SECONDS` are split into windows). A window longer than the video gives one segment.
            batch_size: segments captioned together, and decoded ahead (in a background thread, while the CNN
                encodes the batch before); the CNN takes at most `CNN_FRAMES` frames a call, so memory hardly grows
                with it (docs/segments.md has the measurements).
            seek: `"keyframe"` samples each segment's frames at the nearest keyframes (faster, approximate).
            scenes: how cuts are found: `"pyscenedetect"` (its content detector, `pip install 'captioner[scenes]'`),
                `"cnn"` (the frame CNN's features, `SCENE_FPS` frames a second), or `"auto"`: PySceneDetect where
                installed, else the CNN.

        Raises:
            ValueError: `segments` is not a positive number of seconds nor `"scenes"`.
            VideoReadError: the file cannot be read.
        """
        return list(self.caption_results([path], batch_size, seek=seek, strict=True, segments=segments,
                                         scenes=scenes, **overrides))

    def caption_results(
        self,
        inputs: Iterable[PathLike],
        batch_size: int = 8,
        num_frames: Optional[int] = None,
        seek: Optional[str] = None,
        progress: Optional[bool] = False,
        on_clip: Optional[Callable[[str, torch.Tensor], None]] = None,
        features: Optional[Callable[[str], Optional[torch.Tensor]]] = None,
        strict: bool = False,
        generation: Optional[GenerationConfig] = None,
        desc: str = "Captioning",
        segments: Optional[SegmentsSpec] = None,
        scenes: str = SCENE_DETECTOR,
        **overrides: Any,
    ) -> Iterator[CaptionResult]:
        """Caption video files and directories of them, yielding one result per video (or per segment of each
        video, with `segments`) in input order: the one loop over videos (`caption`, `caption_segments`,
        `captioner caption` and `captioner evaluate` run it).

        Each clip is read on its own, so a missing, foreign, truncated or empty file becomes a failed result
        (its `error` says why) while the readable clips of the same batch go through the encoder and decoder
        together. Results are deterministic for a given model and `batch_size`. With `segments`, a video's segments
        are the clips: their frames come from one forward decode of the video, `batch_size` segments at a time.

        Args:
            inputs: video files and/or directories (a directory stands for its video files, sorted by name).
            batch_size: clips encoded and decoded together.
            num_frames: frames sampled per clip instead of the checkpoint's own.
            seek: `"exact"`, or `"keyframe"`: each sample snapped to the nearest keyframe, approximate and much
                faster on long videos (see `read_frames`); default: the checkpoint's.
            progress: tqdm bar on stderr; `None` shows it for more than `PROGRESS_MIN_VIDEOS` videos on a terminal.
            on_clip: called with (`CaptionResult.key`: the path, or path#t=start,end for a segment; frames
                `(T, H, W, 3)` uint8) for each clip read (the HTML report's strips).
            features: the features `(T, D)` already computed for a path (a feature cache), or `None`: the clip is
                read and encoded. The backbone is built only when a clip needs it. Not used for segments.
            strict: raise at the first file that cannot be read instead of yielding its failure (`caption`); a
                directory without videos then adds nothing.
            generation, overrides: the generation settings (default: `self.generation`) and settings replacing
                them (`beam_size=1`, ...), merged once, before any video is read.
            desc: the progress bar's label.
            segments, scenes: caption each video's segments instead of the whole video (see `caption_segments`).

        Raises:
            WeightsUnavailableError: the backbone's weights are not on this machine and cannot be downloaded (raised
                before the first video is read).
            VideoReadError, OSError: with `strict`, the first file that cannot be read, or directory listed.
            ValueError: `batch_size` below 1, or `segments` neither a positive number of seconds nor "scenes".
        """
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if segments is not None:
            segments = parse_segments(segments)
            if scenes not in SCENE_DETECTORS:
                raise ValueError(f"scenes must be one of {SCENE_DETECTORS}, got {scenes!r}")
        settings = (generation or self.generation).merged(**overrides)
        items = _work_items(inputs, strict)
        if progress is None:
            progress = len(items) > PROGRESS_MIN_VIDEOS and sys.stderr.isatty()
        units = _clip_units(self, items, num_frames, seek, strict, segments, scenes, batch_size)
        with tqdm(total=len(items), desc=desc, unit="video", file=sys.stderr, disable=not progress,
                  dynamic_ncols=True) as bar:
            while chunk := list(itertools.islice(units, batch_size)):
                results: list[Optional[CaptionResult]] = [None] * len(chunk)
                feats: dict[int, torch.Tensor] = {}  # chunk index -> (T, D)
                clips: dict[int, torch.Tensor] = {}  # chunk index -> (T, H, W, 3) uint8
                for i, unit in enumerate(chunk):
                    error = unit.error
                    if error is None and features is not None and unit.start is None:
                        cached = features(unit.video)
                        if cached is not None:
                            feats[i] = cached
                            continue
                    if error is None:
                        self.encoder  # built before the first read: a missing download is not the file's fault
                        clips[i], error = unit.read()
                    if error is not None:
                        results[i] = CaptionResult(unit.video, error=error, start=unit.start, end=unit.end)
                    elif on_clip is not None:
                        on_clip(unit.key, clips[i])
                clips = {i: clip for i, clip in clips.items() if clip is not None}
                if clips:
                    encoded = _encode(self.encoder.eval(), list(clips.values()), segments is not None)
                    feats.update(zip(clips, encoded))  # (B, T, H, W, 3) -> (B, T, D)
                if feats:
                    order = sorted(feats)
                    batch = torch.stack([feats[i].to(self.device, torch.float32) for i in order])  # (B, T, D)
                    for i, c in zip(order, self.caption_features(batch, with_scores=True, generation=settings)):
                        results[i] = CaptionResult(chunk[i].video, caption=c.text, score=c.score,
                                                   familiarity=c.familiarity, in_domain=c.in_domain,
                                                   start=chunk[i].start, end=chunk[i].end)
                bar.update(sum(unit.last for unit in chunk))
                yield from results

    def _read_one(self, path: str, num_frames: Optional[int], seek: Optional[str],
                  strict: bool) -> tuple[Optional[torch.Tensor], Optional[str]]:
        """`(frames, None)`, or `(None, why)` for a file that cannot be read (with `strict`, its error is raised)."""
        try:
            return self.read_clip(path, num_frames, seek), None
        except VideoReadError as err:
            if strict:
                raise
            return None, err.reason
        except Exception as err:  # a decoder library failing in a way we did not foresee: still per file
            if strict:
                raise
            log.debug("reading %s failed", path, exc_info=True)
            return None, f"could not be read ({type(err).__name__}: {err})"


@dataclass
class _ClipUnit:
    """One clip for the loop: a whole video or a segment of one, its frames read on demand (`read`)."""

    video: str
    error: Optional[str] = None
    read: Optional[Callable[[], tuple[Optional[torch.Tensor], Optional[str]]]] = None
    start: Optional[float] = None
    end: Optional[float] = None
    last: bool = True  # the video's last clip (the progress bar counts videos)

    @property
    def key(self) -> str:
        return self.video if self.start is None else f"{self.video}#t={self.start:.3f},{self.end:.3f}"


def _clip_units(model: Any, items: list[tuple[str, Optional[str]]], num_frames: Optional[int],
                seek: Optional[str], strict: bool, segments: Optional[SegmentsSpec],
                scenes: str, batch_size: int) -> Iterator[_ClipUnit]:
    """The loop's clips, lazily: each video whole, or each segment of each video (planned when reached)."""
    for path, error in items:
        if error is not None or segments is None:
            yield _ClipUnit(path, error, lambda p=path: model._read_one(p, num_frames, seek, strict))
        else:
            yield from _segment_units(model, path, segments, num_frames, seek, strict, scenes, batch_size)


def _encode(encoder: Any, clips: list[torch.Tensor], segments: bool) -> torch.Tensor:
    """`encoder.encode_clips(clips)`; for segments `CNN_FRAMES` frames a call at most, so the CNN's activations
    do not grow with the batch of segments (`--batch-size`)."""
    step = max(1, CNN_FRAMES // max(1, len(clips[0]))) if segments else len(clips)
    if step >= len(clips):
        return encoder.encode_clips(clips)
    return torch.cat([encoder.encode_clips(clips[b : b + step]) for b in range(0, len(clips), step)])


def _failure(path: str, err: Exception, strict: bool) -> str:
    """The one-line reason a video failed; with `strict` the error is raised instead."""
    if strict:
        raise err
    if isinstance(err, VideoReadError):
        return err.reason
    log.debug("reading %s failed", path, exc_info=err)
    return f"could not be read ({type(err).__name__}: {err})"


def _segment_units(model: Any, path: str, segments: SegmentsSpec, num_frames: Optional[int], seek: Optional[str],
                   strict: bool, scenes: str, batch_size: int) -> Iterator[_ClipUnit]:
    """A video's segments as clips, their frames from one forward decode (`SegmentReader.segment_frames`) in a
    background thread up to a batch of segments ahead (`read_ahead`): decoding overlaps the CNN."""
    try:
        model.encoder  # the backbone before the video: a missing download is not the file's fault
        reader = SegmentReader(path, model.encoder.preprocessing.resize_size)
        cuts = detect_cuts(model, reader, scenes) if segments == SCENES else None
        plan = plan_segments(reader, segments, cuts)
    except Exception as err:
        if isinstance(err, ImportError):
            raise  # PySceneDetect missing: the same for every video
        yield _ClipUnit(path, _failure(path, err, strict))
        return
    frames = read_ahead(reader.segment_frames(plan, num_frames or model.spec.num_frames, seek or model.spec.seek),
                        batch_size)
    broken: list[str] = []  # once decoding fails, the video's later segments fail with the same reason

    def read() -> tuple[Optional[torch.Tensor], Optional[str]]:
        if broken:
            return None, broken[0]
        try:
            return next(frames), None
        except Exception as err:
            broken.append(_failure(path, err, strict))
            return None, broken[0]

    for k, segment in enumerate(plan):
        yield _ClipUnit(path, None, read, segment.start, segment.end, last=k == len(plan) - 1)


def detect_cuts(model: Any, reader: SegmentReader, scenes: str = SCENE_DETECTOR) -> list[float]:
    """Scene cuts (seconds) of the video `reader` reads: by `model`'s frame CNN (`"cnn"`: features of
    `SCENE_FPS` frames a second, `feature_cuts`), by PySceneDetect (`"pyscenedetect"`), or `"auto"` (see
    `scene_detector`)."""
    if scene_detector(scenes) == "pyscenedetect":
        return pyscenedetect_cuts(reader.path)
    indices = reader.indices_at_fps(SCENE_FPS)
    feats = []
    for b in range(0, len(indices), CUT_BATCH):
        frames = reader.frames(indices[b : b + CUT_BATCH])  # (N, H, W, 3), decoded forward
        feats.append(_frame_features(model.encoder.eval(), frames).float().cpu())  # (N, H, W, 3) -> (N, D)
    return feature_cuts(torch.cat(feats), reader.times[indices].tolist())


def _frame_features(encoder: Any, frames: torch.Tensor) -> torch.Tensor:
    """A vector per frame `(N, D)`: the CNN's features (`encode_clips` of one clip), or for `--runtime onnx`,
    whose graph ends in the video vector, each frame's vector as a clip of one (`OnnxCaptioner.encode_frames`)."""
    encode_frames = getattr(encoder, "encode_frames", None)
    if encode_frames is not None:
        return encode_frames(frames)
    return encoder.encode_clips([frames])[0]  # (1, N, D) -> (N, D)


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
