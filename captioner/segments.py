"""Cut a video into timed segments (fixed windows or scenes) and read every segment's frames in one decode."""

from __future__ import annotations

import math
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Optional, Sequence, TypeVar, Union

import numpy as np
import torch

from captioner.video import (VideoReadError, decode_size, probe_video, sample_frame_indices, snap_to_keyframes)

PathLike = Union[str, os.PathLike]
SCENES = "scenes"
SegmentsSpec = Union[float, Literal["scenes"]]
T = TypeVar("T")

MIN_SEGMENT_SECONDS = 1.0  # a scene or a last window shorter than this joins its neighbour
MAX_SCENE_SECONDS = 30.0  # a longer scene is split into equal windows no longer than this
SCENE_FPS = 4.0  # frames a second the frame CNN sees to find cuts (`feature_cuts`)
# a cut: the cosine distance between the CNN features of consecutive sampled frames is the highest within a sample
# either side and above CUT_DISTANCE, or above CUT_RATIO times the median distance of the CUT_CONTEXT samples either
# side (and CUT_FLOOR). Pretrained ImageNet features on docs/segments.md's film: cuts 0.24-0.63, within a scene
# under 0.08; random-weight features (the tests' tiny model): cuts 0.003-0.02, within a scene under 0.001
CUT_DISTANCE, CUT_RATIO, CUT_CONTEXT, CUT_FLOOR = 0.15, 5.0, 8, 0.002
CUT_BATCH = 32  # frames decoded and encoded together to find cuts
SCENE_DETECTORS = ("auto", "pyscenedetect", "cnn")
SCENE_DETECTOR = "auto"  # PySceneDetect where installed, else the CNN: docs/segments.md has the measurements
SEGMENT_BATCH = 8  # segments decord decodes together (`--fast-seek`, a rotated video): memory holds their frames
CNN_FRAMES = 32  # frames the CNN encodes together when captioning segments: its activations (~8 MB a frame at
# 160 px) bound the memory of a large --batch-size; fewer costs time (16 frames a call: ~15 % slower on 2 cores)


@dataclass(frozen=True)
class Segment:
    """A stretch of a video: `[start, end)` in seconds, frames `[first, stop)` by index (presentation order)."""

    start: float
    end: float
    first: int
    stop: int

    def frame_indices(self, num_frames: int) -> list[int]:
        """`num_frames` frames spread over the segment as over a clip of its own (`sample_frame_indices`)."""
        return [self.first + i for i in sample_frame_indices(self.stop - self.first, num_frames)]


def parse_segments(value: Union[str, float, int]) -> SegmentsSpec:
    """`"scenes"`, or a positive, finite number of seconds; anything else a one-line `ValueError`."""
    if isinstance(value, str) and value.strip().lower() == SCENES:
        return SCENES
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"segments must be a number of seconds or {SCENES!r}, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"segments must be a positive number of seconds or {SCENES!r}, got {value!r}")
    return seconds


def window_bounds(duration: float, seconds: float, min_seconds: float = MIN_SEGMENT_SECONDS) -> list[float]:
    """Boundaries `[0, s, 2s, ..., duration]` of fixed windows of `seconds`; a last window shorter than
    `min_seconds` joins the one before it, and a window longer than the video gives the whole video."""
    seconds = parse_segments(seconds)
    count = max(1, math.ceil(duration / seconds - 1e-9))
    bounds = [i * seconds for i in range(count)] + [duration]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < min(min_seconds, seconds):
        del bounds[-2]
    return bounds


def scene_bounds(cuts: Sequence[float], duration: float, min_seconds: float = MIN_SEGMENT_SECONDS,
                 max_seconds: float = MAX_SCENE_SECONDS) -> list[float]:
    """Boundaries of the scenes between `cuts` (seconds): a scene shorter than `min_seconds` joins the one before
    it (the first one joins the next), one longer than `max_seconds` is split into equal windows."""
    bounds = [0.0] + sorted(c for c in set(cuts) if 0 < c < duration) + [duration]
    merged = [bounds[0]]
    for b in bounds[1:-1]:
        if b - merged[-1] >= min_seconds:
            merged.append(b)
    if len(merged) > 1 and duration - merged[-1] < min_seconds:
        merged.pop()  # the last scene is short: it joins the one before
    merged.append(duration)
    split = [0.0]
    for a, b in zip(merged, merged[1:]):
        pieces = max(1, math.ceil((b - a) / max_seconds - 1e-9))
        split += [a + (b - a) * k / pieces for k in range(1, pieces + 1)]
    return split


def segments_of(bounds: Sequence[float], times: np.ndarray) -> list[Segment]:
    """Segments between `bounds` (seconds), each holding the frames whose start time `times` falls in it; a
    stretch without a frame (a gap in a variable-frame-rate video) joins the segment before it."""
    firsts = np.searchsorted(times, np.asarray(bounds[:-1]) - 1e-6, side="left")
    segments: list[Segment] = []
    for start, end, first, stop in zip(bounds, bounds[1:], firsts, list(firsts[1:]) + [len(times)]):
        if stop > first:
            segments.append(Segment(float(start), float(end), int(first), int(stop)))
        elif segments:
            last = segments[-1]
            segments[-1] = Segment(last.start, float(end), last.first, last.stop)
    if segments and segments[0].start > 0:
        segments[0] = Segment(0.0, segments[0].end, 0, segments[0].stop)
    return segments


def feature_cuts(feats: torch.Tensor, times: Sequence[float]) -> list[float]:
    """Cuts between consecutive sampled frames whose features `(N, D)` differ most (see `CUT_DISTANCE`); a cut lies
    halfway between the two frames' `times`."""
    if len(feats) < 2:
        return []
    f = torch.nn.functional.normalize(feats.float(), dim=1)
    dist = (1 - (f[:-1] * f[1:]).sum(1)).tolist()  # (N - 1,): between frame k and k + 1
    cuts = []
    for k, d in enumerate(dist):
        neighbours = dist[max(0, k - 1) : k] + dist[k + 1 : k + 2]
        context = dist[max(0, k - CUT_CONTEXT) : k] + dist[k + 1 : k + 1 + CUT_CONTEXT]
        threshold = min(CUT_DISTANCE, max(CUT_FLOOR, CUT_RATIO * float(np.median(context)) if context else 0.0))
        if d > threshold and all(d >= n for n in neighbours):
            cuts.append((times[k] + times[k + 1]) / 2)
    return cuts


def scene_detector(name: str = SCENE_DETECTOR) -> str:
    """`"pyscenedetect"` or `"cnn"`; `"auto"`: PySceneDetect when it is installed, else the CNN."""
    if name != "auto":
        return name
    import importlib.util

    return "pyscenedetect" if importlib.util.find_spec("scenedetect") else "cnn"


def pyscenedetect_cuts(path: PathLike, min_seconds: float = MIN_SEGMENT_SECONDS) -> list[float]:
    """Cuts (seconds) found by PySceneDetect's content detector (`pip install 'captioner[scenes]'`)."""
    try:
        from scenedetect import ContentDetector, SceneManager, open_video
    except ImportError:
        raise ImportError("PySceneDetect is not installed: pip install 'captioner[scenes]'") from None
    import logging

    logging.getLogger("pyscenedetect").setLevel(logging.WARNING)  # not its "Detecting scenes..." per video
    video = open_video(str(path), backend="opencv")
    manager = SceneManager()
    manager.add_detector(ContentDetector(min_scene_len=max(1, int(min_seconds * float(video.frame_rate)))))
    manager.detect_scenes(video, show_progress=False)
    return [start.get_seconds() for start, _ in manager.get_scene_list()[1:]]


class SegmentReader:
    """One open video: its frames' times, and the frames of many segments from one sequential decode.

    decord's `get_batch` over sorted indices decodes forward from keyframe to keyframe, every frame at most once;
    segments are decoded `batch` at a time, so memory holds a batch of segments' frames, not the video. A file
    decord cannot read is decoded sequentially by PyAV instead.

    Args:
        short_side: frames resized so (as `read_frames`); `None` keeps the stored size.
    """

    def __init__(self, path: PathLike, short_side: Optional[int] = 256):
        import decord

        self.path = Path(path)
        info = probe_video(self.path)  # a clear error for a missing, empty or foreign file
        self.rotation = info.rotation
        self.size = decode_size(*info.display_size, short_side) if short_side else (-1, -1)
        self._reader = None
        try:
            self._reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0), width=self.size[0],
                                              height=self.size[1], num_threads=1)
            self.times = np.asarray(self._reader.get_frame_timestamp(np.arange(len(self._reader))))[:, 0]
            self.end = float(self._reader.get_frame_timestamp(len(self._reader) - 1)[1])
        except Exception:
            self._reader = None
            self.times, self.end = self._pyav_times()
        if len(self.times) < 1:
            raise VideoReadError(self.path, "contains no video frames")
        if not np.all(np.diff(self.times) >= 0):  # timestamps out of order: fall back to an even spacing
            self.times = np.linspace(0, self.end, len(self.times), endpoint=False)

    @property
    def duration(self) -> float:
        """Seconds from the first frame to the end of the last, by the frames' own times (not the header's)."""
        return max(self.end, float(self.times[-1]))

    def _pyav_times(self) -> tuple[np.ndarray, float]:
        import av

        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
                base = float(stream.time_base)
                rate = float(stream.average_rate or stream.guessed_rate or 25)
        except Exception as err:
            raise VideoReadError(self.path, f"not a readable video ({err})") from None
        times = (np.asarray(pts, dtype=np.float64) - (pts[0] if pts else 0)) * base
        return times, (float(times[-1]) + 1 / rate) if len(times) else 0.0

    def indices_at_fps(self, fps: float) -> list[int]:
        """Indices of frames about `fps` a second apart (every frame for a slower video)."""
        step = 1.0 / fps
        wanted = np.arange(0.0, self.duration, step)
        return sorted(set(np.searchsorted(self.times, wanted, side="left").clip(0, len(self.times) - 1).tolist()))

    def frames(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 frames `(N, H, W, 3)` at sorted `indices`, decoded forward from the last call's position."""
        if self._reader is not None:
            try:
                return torch.from_numpy(np.ascontiguousarray(self._reader.get_batch(list(indices)).asnumpy()))
            except Exception:
                self._reader = None  # a frame decord cannot give: PyAV reads the rest
        return self._pyav_frames(indices)

    def _pyav_frames(self, indices: Sequence[int]) -> torch.Tensor:
        import av

        wanted, kept = set(indices), {}
        try:
            with av.open(str(self.path)) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i in wanted:
                        kept[i] = frame.to_ndarray(format="rgb24")
                    if i >= max(wanted):
                        break
        except Exception:  # a broken packet ends the readable part
            pass
        if not kept:
            raise VideoReadError(self.path, "no frame could be decoded (truncated or corrupt video)")
        last = kept[max(kept)]
        frames = np.stack([kept.get(i, last) for i in indices])  # (N, H, W, 3)
        if self.rotation:
            frames = np.rot90(frames, k=self.rotation // 90, axes=(1, 2))
        out = torch.from_numpy(np.ascontiguousarray(frames))
        if self.size[0] > 0 and tuple(out.shape[1:3]) != (self.size[1], self.size[0]):
            import torchvision.transforms.v2.functional as TF

            out = TF.resize(out.permute(0, 3, 1, 2), [self.size[1], self.size[0]], antialias=True)
            out = out.permute(0, 2, 3, 1).contiguous()
        return out

    def segment_frames(self, segments: Sequence[Segment], num_frames: int, seek: str = "exact",
                       batch: int = SEGMENT_BATCH) -> Iterator[torch.Tensor]:
        """Each segment's `num_frames` frames `(T, H, W, 3)`, in order, from one forward decode.

        Exact sampling (the default): one forward pass by PyAV, each sampled frame scaled the moment it is decoded
        (`stream_frames`); a segment is yielded as soon as its last frame is decoded, so memory holds one segment's
        small frames, never a full-size frame more than the decoder's own. `seek="keyframe"`: each sample moves to
        the nearest keyframe, so only keyframes are decoded (`--fast-seek`), by decord, `batch` segments at a time
        (as a rotated video, which decord turns upright).
        """
        wanted = [s.frame_indices(num_frames) for s in segments]
        if seek != "keyframe" and not self.rotation:
            yield from _group(self.stream_frames(sorted({i for w in wanted for i in w})), wanted)
            return
        keys = list(self._reader.get_key_indices()) if seek == "keyframe" and self._reader is not None else []
        for b in range(0, len(wanted), batch):
            chunk = [snap_to_keyframes(w, keys) for w in wanted[b : b + batch]] if keys else wanted[b : b + batch]
            order = sorted({i for w in chunk for i in w})
            decoded = self.frames(order)  # (N, H, W, 3)
            row = {i: k for k, i in enumerate(order)}
            for w in chunk:
                yield decoded[[row[i] for i in w]]

    def stream_frames(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """`(index, uint8 frame (H, W, 3))` for each of the sorted `indices`, from one forward decode by PyAV.

        Each wanted frame is scaled (FFmpeg's bilinear scaler, as decord's: the same pixels) and converted to RGB
        the moment it is decoded; the others are never converted. After a broken packet, or past the last
        decodable frame, the remaining indices get the last frame decoded (as `frames` does).

        Raises:
            VideoReadError: not one frame could be decoded.
        """
        import av

        try:
            container = av.open(str(self.path))
        except Exception:  # PyAV cannot open what decord opened: decord reads it, a batch of frames at a time
            for b in range(0, len(indices), SEGMENT_BATCH * 8):
                chunk = list(indices[b : b + SEGMENT_BATCH * 8])
                yield from zip(chunk, self.frames(chunk).numpy())
            return
        k, last, scale = 0, None, _Scaler(*self.size)
        with container:
            stream = container.streams.video[0]
            stream.thread_type, stream.codec_context.thread_count = "SLICE", 1  # the CNN has the other cores
            try:
                for i, frame in enumerate(container.decode(stream)):
                    if k == len(indices):
                        break
                    if i == indices[k]:
                        last = scale(frame)
                        while k < len(indices) and indices[k] == i:
                            yield i, last
                            k += 1
            except Exception:  # a broken packet ends the readable part
                pass
        if last is None and k < len(indices):
            raise VideoReadError(self.path, "no frame could be decoded (truncated or corrupt video)")
        for i in indices[k:]:
            yield i, last


class _Scaler:
    """A decoded `av.VideoFrame` -> uint8 RGB `(H, W, 3)` at `(width, height)` (`-1`: the frame's own), through
    the filter graph decord uses (`scale=W:H:flags=bilinear`, then `rgb24`), so frames equal decord's."""

    def __init__(self, width: int, height: int):
        self.size = (width, height)
        self.key: Optional[tuple] = None
        self.graph = None

    def __call__(self, frame) -> np.ndarray:
        import av

        key = (frame.width, frame.height, frame.format.name)
        if key != self.key:  # the first frame, or a stream whose frame size changes
            width, height = (w if w > 0 else f for w, f in zip(self.size, key[:2]))
            graph = av.filter.Graph()
            chain = [graph.add_buffer(width=key[0], height=key[1], format=key[2], time_base=frame.time_base),
                     graph.add("scale", f"{width}:{height}:flags=bilinear"), graph.add("format", "rgb24"),
                     graph.add("buffersink")]
            for a, b in zip(chain, chain[1:]):
                a.link_to(b)
            graph.configure()
            self.key, self.graph = key, graph
        self.graph.push(frame)
        return self.graph.pull().to_ndarray()


def _group(frames: Iterator[tuple[int, np.ndarray]], wanted: Sequence[Sequence[int]]) -> Iterator[torch.Tensor]:
    """Each of `wanted`'s index lists (in order, ascending) as a clip `(T, H, W, 3)` from the `(index, frame)`
    stream, yielded once its last frame arrives; frames no later list needs are let go."""
    held: dict[int, np.ndarray] = {}
    pending = iter(wanted)
    current = next(pending, None)
    for i, frame in frames:
        held[i] = frame
        while current is not None and i >= max(current):
            yield torch.from_numpy(np.stack([held[j] for j in current]))
            current = next(pending, None)
            floor = min(current) if current is not None else math.inf
            held = {j: f for j, f in held.items() if j >= floor}


def read_ahead(items: Iterator[T], depth: int) -> Iterator[T]:
    """`items`, produced by a background thread up to `depth` ahead of the consumer (a bounded queue): decoding
    (PyAV and decord release the GIL) overlaps the CNN encoding what was read before. An error in `items` is
    raised at the item it replaced; closing this generator stops the thread."""
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as err:  # handed to the consumer, raised there
            put((False, err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="captioner-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            more, item = slots.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


def plan_segments(reader: SegmentReader, segments: SegmentsSpec, cuts: Optional[Sequence[float]] = None,
                  min_seconds: float = MIN_SEGMENT_SECONDS, max_seconds: float = MAX_SCENE_SECONDS) -> list[Segment]:
    """The segments of the video `reader` reads: fixed windows of `segments` seconds, or the scenes between
    `cuts` (seconds)."""
    spec = parse_segments(segments)
    if spec == SCENES:
        bounds = scene_bounds(cuts or [], reader.duration, min_seconds, max_seconds)
    else:
        bounds = window_bounds(reader.duration, spec, min_seconds)
    return segments_of(bounds, reader.times)
