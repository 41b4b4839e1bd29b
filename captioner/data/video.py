"""Open a video file and sample frames from it (shared by training, feature extraction and inference)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")


class VideoReadError(RuntimeError):
    """A video could not be read; the message names the file and the reason."""

    def __init__(self, path: PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    num_frames: int  # as the container says: may be wrong
    fps: float


def sample_frame_indices(num_available: int, num_samples: int) -> list[int]:
    """Indices of `num_samples` frames spread uniformly over `num_available` (the centre of equal segments).

    Frames repeat when the clip is shorter than `num_samples`.
    """
    if num_available < 1 or num_samples < 1:
        raise ValueError(f"need at least one frame and one sample, got {num_available=}, {num_samples=}")
    return [min(int((i + 0.5) * num_available / num_samples), num_available - 1) for i in range(num_samples)]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(path, "file not found")
    if path.is_dir():
        raise VideoReadError(path, "is a directory, not a video file")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "empty file (0 bytes)")


def probe_video(path: PathLike) -> VideoInfo:
    """Read the container's metadata (no decoding) with PyAV."""
    import av

    path = Path(path)
    _check_file(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(path, "no video stream (audio-only or not a video)")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            frames = int(stream.frames or 0)
    except VideoReadError:
        raise
    except Exception as err:  # PyAV raises many error types for broken or foreign files
        reason = getattr(err, "strerror", None) or str(err)  # PyAV's str() repeats the file name
        raise VideoReadError(path, f"not a readable video ({reason})") from None
    if width <= 0 or height <= 0:
        raise VideoReadError(path, f"invalid frame size {width}x{height}")
    return VideoInfo(width=width, height=height, num_frames=frames, fps=fps)


def decode_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to `short_side`, aspect kept, both even."""
    scale = short_side / min(width, height)
    even = lambda x: max(2, int(round(x * scale / 2)) * 2)  # noqa: E731
    return even(width), even(height)


def read_frames(path: PathLike, num_frames: int = 8, short_side: int | None = 256) -> torch.Tensor:
    """Decode `num_frames` frames sampled uniformly over the whole clip.

    Decoding resizes on the fly (the short side becomes `short_side`; `None` keeps the original size),
    and only the sampled frames are kept, so memory is bounded by `num_frames`, not the video length.

    Returns:
        uint8 tensor `(T, H, W, 3)` in RGB.

    Raises:
        VideoReadError: the file is missing, empty, not a video, truncated or has no frames.
    """
    path = Path(path)
    info = probe_video(path)
    if not short_side:
        return _decode(path, num_frames, -1, -1)
    width, height = decode_size(info.width, info.height, short_side)
    try:
        return _decode(path, num_frames, width, height)
    except VideoReadError:
        if (width, height) == (info.width, info.height):
            raise
        # decord's scaler rejects some target sizes (e.g. 64x64 -> 72x72): decode at the stored size and
        # resize here; if that fails too, the file itself is broken and its error is the one to report
        frames = _decode(path, num_frames, -1, -1)
        import torchvision.transforms.v2.functional as TF

        resized = TF.resize(frames.permute(0, 3, 1, 2), [height, width], antialias=True)
        return resized.permute(0, 2, 3, 1).contiguous()


def _decode(path: Path, num_frames: int, width: int, height: int) -> torch.Tensor:
    import decord

    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    except Exception as err:
        raise VideoReadError(path, f"not a readable video ({_short(err)})") from None
    count = len(reader)
    if count < 1:
        raise VideoReadError(path, "contains no video frames")
    try:
        frames = reader.get_batch(sample_frame_indices(count, num_frames)).asnumpy()
    except Exception:
        # The index can promise frames the stream does not have (lying header, truncated file):
        # count the frames that really decode, then sample among those.
        count = _count_decodable(reader)
        if count < 1:
            raise VideoReadError(path, "no frame could be decoded (truncated or corrupt video)") from None
        try:
            frames = reader.get_batch(sample_frame_indices(count, num_frames)).asnumpy()
        except Exception as err:
            raise VideoReadError(path, f"decoding failed ({_short(err)})") from None
    return torch.from_numpy(np.ascontiguousarray(frames))


def _count_decodable(reader) -> int:
    reader.seek(0)
    count = 0
    while True:
        try:
            reader.next()
        except Exception:  # StopIteration at the real end, a DECORDError on a broken packet
            return count
        count += 1


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[-1][:200] if text else type(err).__name__


def is_video_file(path: PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def list_videos(folder: PathLike) -> list[Path]:
    """Video files directly inside `folder`, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_video_file(p))
