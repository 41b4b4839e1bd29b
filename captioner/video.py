"""Open a video file and sample frames from it (shared by training, feature extraction and inference)."""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch

from captioner.config import SEEK_MODES

PathLike = Union[str, os.PathLike]
SeekMode = Literal["exact", "keyframe"]

_ffmpeg_verbose: Optional[bool] = None  # FFmpeg's own logging, once chosen (None: quiet on first use)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
# A clip that holds fewer than this share of the frames its header lists was cut off (an interrupted copy or
# download): its captions describe a whole clip of which only the start is left, so it is not read at all.
MIN_READABLE_SHARE = 0.5


class VideoReadError(RuntimeError):
    """A video could not be read; the message names the file and the reason."""

    def __init__(self, path: PathLike, reason: str):
        self.path, self.reason = str(path), " ".join(str(reason).split())  # one line, whatever the library said
        super().__init__(f"{path}: {self.reason}")


class TruncatedVideoError(VideoReadError):
    """A video cut off: the file holds far fewer frames than its header lists (see `MIN_READABLE_SHARE`)."""

    def __init__(self, path: PathLike, readable: int, listed: int):
        self.readable, self.listed = readable, listed
        super().__init__(path, f"truncated: only {readable} of the {listed} frames its header lists are in the file")


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    num_frames: int  # as the container says: may be wrong
    fps: float
    rotation: int = 0  # display rotation in degrees, counter-clockwise (phones store portrait clips this way)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as the video is shown, i.e. after its rotation."""
        return (self.height, self.width) if self.rotation % 180 == 90 else (self.width, self.height)


def set_ffmpeg_logging(verbose: bool = False) -> None:
    """FFmpeg's own lines on stderr (`[h264 @ 0x...] error while decoding MB 0 2`): off, or on with `verbose`.

    Both decoders carry a libav of their own, which writes to file descriptor 2 directly, past Python's
    `sys.stderr`: decord's prints errors and warnings by default (a line per damaged slice of a damaged clip, over
    the command's own lines); PyAV's is off by default (PyAV >= 13). Reading a video turns both off unless this
    was called before; the commands call it with their `--verbose`. With `verbose`, both print warnings and errors
    in FFmpeg's own format.
    """
    global _ffmpeg_verbose
    import av.logging
    import decord

    decord.logging.set_level(decord.logging.WARNING if verbose else decord.logging.QUIET)
    if verbose:
        av.logging.restore_default_callback()  # FFmpeg's printer, as decord's, rather than Python logging
        av.logging.set_libav_level(av.logging.WARNING)
    else:
        av.logging.set_level(None)
    _ffmpeg_verbose = verbose


def _quiet_ffmpeg_unless_chosen() -> None:
    if _ffmpeg_verbose is None:
        set_ffmpeg_logging(False)


def sample_frame_indices(num_available: int, num_samples: int) -> list[int]:
    """Indices of `num_samples` frames spread uniformly over `num_available` (the centre of equal segments).

    Frames repeat when the clip is shorter than `num_samples`.
    """
    if num_available < 1 or num_samples < 1:
        raise ValueError(f"need at least one frame and one sample, got {num_available=}, {num_samples=}")
    return [min(int((i + 0.5) * num_available / num_samples), num_available - 1) for i in range(num_samples)]


def snap_to_keyframes(indices: Sequence[int], key_indices: Sequence[int]) -> list[int]:
    """Each index moved to the nearest of `key_indices` (the earlier one on a tie); unchanged when there are none."""
    keys = sorted(set(key_indices))
    if not keys:
        return list(indices)
    snapped = []
    for i in indices:
        j = bisect.bisect_left(keys, i)  # keys[j] is the first keyframe at or after i
        if j == 0:
            snapped.append(keys[0])
        elif j == len(keys):
            snapped.append(keys[-1])
        else:
            before, after = keys[j - 1], keys[j]
            snapped.append(after if after - i < i - before else before)
    return snapped


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(path, "file not found")
    if path.is_dir():
        raise VideoReadError(path, "is a directory, not a video file")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "empty file (0 bytes)")


def probe_video(path: PathLike) -> VideoInfo:
    """Read the container's metadata with PyAV (and decode one frame, for the rotation stored with frames)."""
    import av

    path = Path(path)
    _check_file(path)
    _quiet_ffmpeg_unless_chosen()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(path, "no video stream (audio-only or not a video)")
            stream = container.streams.video[0]
            still = _still_image_format(container, stream)
            if still is not None:
                raise VideoReadError(path, f"a still image ({still}), not a video")
            width, height = stream.codec_context.width, stream.codec_context.height
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            frames = int(stream.frames or 0)
            rotation = _first_frame_rotation(container, stream)
    except VideoReadError:
        raise
    except Exception as err:  # PyAV raises many error types for broken or foreign files
        reason = getattr(err, "strerror", None) or str(err)  # PyAV's str() repeats the file name
        raise VideoReadError(path, f"not a readable video ({reason})") from None
    if width <= 0 or height <= 0:
        raise VideoReadError(path, f"invalid frame size {width}x{height}")
    return VideoInfo(width=width, height=height, num_frames=frames, fps=fps, rotation=rotation)


def _still_image_format(container, stream) -> Optional[str]:
    """The picture format of a photo ("JPEG", "PNG", ...); `None` for a video.

    FFmpeg opens photos as one-frame videos: by their extension (the `image2` demuxer) or, for a photo renamed
    `.mp4`, by their content (`jpeg_pipe`, `png_pipe`, ...), so the container's format tells, not the file name. A
    GIF or APNG is a video when animated and a photo with one frame. A one-frame clip in a video container (an mp4
    of one frame) stays a video.
    """
    demuxer, codec = container.format.name, stream.codec_context.name
    picture = {"mjpeg": "JPEG"}.get(codec, codec.upper())
    if demuxer in ("image2", "image2pipe") or demuxer.endswith("_pipe"):
        return picture
    if demuxer in ("gif", "apng") and stream.frames == 1:
        return picture
    return None


def check_video(path: PathLike) -> VideoInfo:
    """`probe_video`, and the frames the file still holds counted without decoding them (about a millisecond for a
    short clip), so that a file cut off far before the end its header lists is caught as reading it would be.

    Raises:
        VideoReadError: as `probe_video`; `TruncatedVideoError` for a file cut off (see `MIN_READABLE_SHARE`).
    """
    info = probe_video(path)
    _check_complete(path, 0, info.num_frames)
    return info


def _check_complete(path: PathLike, decoded: int, listed: int) -> None:
    """Raise `TruncatedVideoError` when the file holds fewer than `MIN_READABLE_SHARE` of the `listed` frames.

    `decoded`: the frames a decoder got. Only when those are too few are the file's packets counted, which tells a
    file cut off (packets missing) from a damaged one (every packet there, some not decodable: read as FFmpeg can).
    `listed` 0: the header does not say (mkv, webm), nothing to compare with.
    """
    if listed > 0 and decoded < MIN_READABLE_SHARE * listed:
        stored = _count_stored_frames(path)
        if stored < MIN_READABLE_SHARE * listed:
            raise TruncatedVideoError(path, stored, listed)


def _count_stored_frames(path: PathLike) -> int:
    """The video packets in the file, read without decoding them (a frame each)."""
    import av

    stored = 0
    try:
        with av.open(str(path)) as container:
            for packet in container.demux(video=0):
                stored += packet.size > 0 or packet.pts is not None  # not the empty packet that ends the stream
    except Exception:  # a broken packet ends the readable part, as for the decoders
        pass
    return stored


def _first_frame_rotation(container, stream) -> int:
    """The display-matrix rotation, rounded to a multiple of 90 (0 when the first frame does not decode)."""
    try:
        frame = next(container.decode(stream), None)
    except Exception:  # a broken first packet: decoding will report it
        return 0
    angle = float(getattr(frame, "rotation", 0) or 0) if frame is not None else 0.0
    return int(round(angle / 90.0)) * 90 % 360


def decode_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to `short_side`, aspect kept, both even."""
    scale = short_side / min(width, height)
    even = lambda x: max(2, int(round(x * scale / 2)) * 2)  # noqa: E731
    return even(width), even(height)


def read_frames(path: PathLike, num_frames: int = 8, short_side: int | None = 256,
                seek: SeekMode = "exact") -> torch.Tensor:
    """Decode `num_frames` frames sampled uniformly over the whole clip.

    Decoding resizes on the fly (the short side becomes `short_side`; `None` keeps the original size),
    and only the sampled frames are kept, so memory is bounded by `num_frames`, not the video length.

    Args:
        seek: `"exact"` (the default) decodes exactly the uniformly spaced frames: each seek lands on the
            keyframe before the frame and decodes forward to it, up to a keyframe interval of work per frame.
            `"keyframe"` is an approximate, much faster mode for long videos: each sample moves to the nearest
            keyframe (by up to half a keyframe interval, a second or two in most videos), so only keyframes
            are decoded. It falls back to exact sampling when the container has no keyframe index, when
            snapping would give two samples the same frame (fewer keyframes than samples: short clips, where
            exact sampling is cheap anyway), or when the fast path fails. Frames may differ by a pixel
            value or so from exact mode's, which decodes them with decord rather than PyAV.

    Returns:
        uint8 tensor `(T, H, W, 3)` in RGB.

    Raises:
        VideoReadError: the file is missing, empty, not a video (a photo too), unreadable or has no frames;
            `TruncatedVideoError` when the file holds fewer than half the frames its header lists (cut off:
            see `MIN_READABLE_SHARE`). A clip missing fewer frames, or with frames that do not decode, is read:
            the frames are sampled among those that decode.
    """
    if seek not in SEEK_MODES:
        raise ValueError(f"seek must be one of {SEEK_MODES}, got {seek!r}")
    path = Path(path)
    info = probe_video(path)
    # decord returns frames rotated as they are displayed: ask for the displayed size, or a portrait clip's
    # frames would be squeezed into a landscape size
    width, height = decode_size(*info.display_size, short_side) if short_side else (-1, -1)
    if seek == "keyframe":
        frames = _decode_keyframes(path, num_frames, width, height, info.rotation, info.num_frames)
        if frames is not None:
            return frames
    try:
        return _decode(path, num_frames, width, height, info.num_frames)
    except TruncatedVideoError:
        raise
    except VideoReadError as err:
        first_error = err
    # decord's scaler rejects some target sizes (e.g. 64x64 -> 72x72) and its copy some small widths (16 or
    # 48 px), and it gives up on some cut-off files that FFmpeg still reads: decode at the stored size with
    # decord, else with PyAV, and resize here; if both fail, the file itself is broken and decord's error stands
    frames = None
    if short_side and info.display_size != (width, height):
        try:
            frames = _decode(path, num_frames, -1, -1, info.num_frames)
        except TruncatedVideoError:
            raise
        except VideoReadError:
            pass
    if frames is None:
        frames = _decode_with_pyav(path, num_frames, info.rotation, first_error, info.num_frames)
    if not short_side or tuple(frames.shape[1:3]) == (height, width):
        return frames
    import torchvision.transforms.v2.functional as TF

    resized = TF.resize(frames.permute(0, 3, 1, 2), [height, width], antialias=True)
    return resized.permute(0, 2, 3, 1).contiguous()


def _decode(path: Path, num_frames: int, width: int, height: int, listed: int = 0) -> torch.Tensor:
    """`num_frames` sampled frames, decoded by decord; `listed`: the frames the header lists (0: unknown), for
    `_check_complete`."""
    import decord

    _quiet_ffmpeg_unless_chosen()
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    except Exception as err:
        raise VideoReadError(path, f"not a readable video ({_short(err)})") from None
    count = len(reader)  # the packets decord indexed: a cut-off file has fewer than its header lists
    if count < 1:
        raise VideoReadError(path, "contains no video frames")
    _check_complete(path, count, listed)
    try:
        frames = reader.get_batch(sample_frame_indices(count, num_frames)).asnumpy()
    except Exception:
        # The index can promise frames the stream does not have (lying header, truncated file):
        # count the frames that really decode, then sample among those.
        count = _count_decodable(reader)
        if count < 1:
            raise VideoReadError(path, "no frame could be decoded (truncated or corrupt video)") from None
        _check_complete(path, count, listed)
        try:
            frames = reader.get_batch(sample_frame_indices(count, num_frames)).asnumpy()
        except Exception as err:
            raise VideoReadError(path, f"decoding failed ({_short(err)})") from None
    return torch.from_numpy(np.ascontiguousarray(frames))


def _decode_keyframes(path: Path, num_frames: int, width: int, height: int, rotation: int,
                      listed: int = 0) -> Optional[torch.Tensor]:
    """`read_frames(seek="keyframe")`: seek to the keyframe nearest each sample and decode that frame only.

    PyAV rather than decord: with the container's index in hand, one seek and one decoded frame per sample
    is all the work (decord hands every frame between its own threads, about 3x slower on a busy machine).
    Returns `None` where exact sampling must do the job instead (see `read_frames`).
    """
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # as decord's reader: one sample, one frame, no pipeline
            entries = getattr(stream, "index_entries", None)  # one per packet (PyAV >= 14); empty without an index
            # an index shorter than the header is not the file's own but one FFmpeg builds as it reads (an AVI
            # whose index, at its end, was cut off): the exact path counts the frames there are
            if not entries or len(entries) < listed:
                return None
            timestamps = [entry.timestamp for entry in entries]
            keys = [j for j, entry in enumerate(entries) if entry.is_keyframe]
            wanted = sample_frame_indices(len(timestamps), num_frames)
            snapped = snap_to_keyframes(wanted, keys)
            if not keys or len(set(snapped)) < len(set(wanted)):
                return None
            # the index holds decoding times; seeking takes presentation times, later by the decoder's reordering
            # delay (B-frames). A keyframe's delay is the first one's: measure it on the first frame.
            first = next(container.decode(stream), None)
            if first is None or first.pts is None:
                return None
            shift = first.pts - timestamps[keys[0]]
            # the decoder's native size before rotation: the display size turned back
            size = (height, width) if rotation % 180 == 90 else (width, height)
            kept = {}
            for j in sorted(set(snapped)):
                container.seek(timestamps[j] + shift, stream=stream, backward=True)
                frame = next(container.decode(stream), None)
                if frame is None or frame.pts != timestamps[j] + shift:  # not the keyframe asked for: read exactly
                    return None
                # scale and convert in one step with bilinear filtering: the closest to decord's resize (mean
                # |difference| under 1 in 255; scaling in YUV first, then converting, differs by 3)
                sized = dict(width=size[0], height=size[1]) if size[0] > 0 else {}
                kept[j] = frame.reformat(format="rgb24", interpolation="BILINEAR", **sized).to_ndarray()
    except Exception:  # a broken index or packet: the exact path reads it, or explains why it cannot
        return None
    frames = np.stack([kept[j] for j in snapped])  # (T, H, W, 3)
    if rotation:
        frames = np.rot90(frames, k=rotation // 90, axes=(1, 2))  # counter-clockwise, as displayed
    return torch.from_numpy(np.ascontiguousarray(frames))


def _decode_with_pyav(path: Path, num_frames: int, rotation: int, decord_error: VideoReadError,
                      listed: int = 0) -> torch.Tensor:
    """The fallback decoder: count the frames that really decode, then decode again keeping the sampled ones.

    Two passes keep memory bounded by `num_frames`; frames are rotated as decord rotates them.
    """
    import av

    def decoded():
        with av.open(str(path)) as container:
            try:
                yield from container.decode(video=0)
            except Exception:  # a broken packet ends the usable part of the stream
                return

    try:
        count = sum(1 for _ in decoded())
        if count < 1:
            raise VideoReadError(path, "no frame could be decoded (truncated or corrupt video)")
        _check_complete(path, count, listed)
        wanted = sample_frame_indices(count, num_frames)
        kept, frames = {}, decoded()
        for i, frame in enumerate(frames):
            if i in wanted:
                kept[i] = frame.to_ndarray(format="rgb24")
            if i >= wanted[-1]:
                break
        frames.close()
    except VideoReadError:
        raise
    except Exception:
        raise decord_error from None
    if len(kept) < len(set(wanted)):  # the second pass decoded less than the first: not a file to trust
        raise decord_error
    frames = np.stack([kept[i] for i in wanted])  # (T, H, W, 3)
    if rotation:
        frames = np.rot90(frames, k=rotation // 90, axes=(1, 2))  # counter-clockwise, as displayed
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
