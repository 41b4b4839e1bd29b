"""Benchmark frame sampling from a long video: full sequential decode vs exact uniform sampling vs keyframe seeking.

    python benchmarks/frame_sampling.py              # 10-minute 1280x720 25 fps H.264 video, 32 frames
    python benchmarks/frame_sampling.py --smoke      # 3-second 160x90 video: checks the script runs, not the speed

The video (moving shapes over a scrolling textured background, libx264 `ultrafast`, a keyframe every
`--gop-seconds`) is generated once with PyAV and cached under `runs/benchmarks/` (written to a temporary name,
then renamed, so a killed generation never leaves a broken file). Timings are wall-clock medians; the ratios
compare the three ways of getting frames, measured one after another in this process.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Row, format_table, machine_line, median, set_threads, timed, verdict  # noqa: E402

CACHE_DIR = REPO / "runs" / "benchmarks"
EXACT_TARGET, KEYFRAME_TARGET = 5.0, 20.0  # x faster than the full decode (issue 8)


def long_video_path(seconds: int, width: int, height: int, fps: int, gop_seconds: float,
                    folder: Path = CACHE_DIR) -> Path:
    """The cached benchmark video for these settings, generated on first use."""
    gop = max(1, round(gop_seconds * fps))
    path = folder / f"long_{seconds}s_{width}x{height}_{fps}fps_g{gop}.mp4"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
        try:
            write_long_video(tmp, seconds * fps, width, height, fps, gop)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def write_long_video(path: Path, num_frames: int, width: int, height: int, fps: int, gop: int) -> None:
    """H.264 (libx264 ultrafast, CRF 23, yuv420p) with a keyframe exactly every `gop` frames.

    The content is real work for a decoder: a smooth random texture that pans slowly, with four coloured
    squares moving over it along different paths (about 1.6 Mbit/s at 720p, like a web video).
    """
    import av
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    cell = max(4, width // 32)
    margin_x, margin_y = width // 4, height // 4
    small = rng.integers(0, 256, (3, (height + 2 * margin_y) // cell + 2, (width + 2 * margin_x) // cell + 2))
    texture = F.interpolate(torch.tensor(small, dtype=torch.float32)[None], scale_factor=cell, mode="bicubic")
    texture = texture.clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy().copy()  # (H', W', 3)
    side = max(2, height // 6)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # a fixed GOP (no scene-cut keyframes) so that the keyframe interval is the one asked for
        stream.options = {"preset": "ultrafast", "crf": "23", "g": str(gop), "keyint_min": str(gop),
                          "sc_threshold": "0"}
        for i in range(num_frames):
            ox = int(margin_x * (1 + 0.9 * np.sin(i / 90)))
            oy = int(margin_y * (1 + 0.9 * np.cos(i / 70)))
            frame = texture[oy : oy + height, ox : ox + width].copy()
            for k in range(4):
                x = int((width - side) * (0.5 + 0.5 * np.sin(i / (40 + 13 * k) + k)))
                y = int((height - side) * (0.5 + 0.5 * np.cos(i / (55 + 7 * k) + 2 * k)))
                frame[y : y + side, x : x + side] = ((60 * k) % 256, (255 - 40 * k) % 256, (90 + 50 * k) % 256)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def full_decode(path: Path) -> int:
    """The naive baseline: decode every frame of the stream, in order, with PyAV (one decoder thread, no
    conversion to RGB: the cheapest any frame-dumping extractor can be). Returns the frame count."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # as read_frames' decoders: the ratios compare work, not threads
        return sum(1 for _ in container.decode(stream))


def sample_shift(path: Path, num_frames: int, fps: int) -> tuple[int, float, float]:
    """(keyframes, mean and largest move in seconds) of the keyframe samples against the exact ones."""
    import decord

    from captioner.video import sample_frame_indices, snap_to_keyframes

    reader = decord.VideoReader(str(path), num_threads=1)
    keys = list(reader.get_key_indices())
    exact = sample_frame_indices(len(reader), num_frames)
    moves = [abs(a - b) / fps for a, b in zip(exact, snap_to_keyframes(exact, keys))]
    return len(keys), sum(moves) / len(moves), max(moves)


def run(smoke: bool = False, threads: int | None = 1, seconds: int = 600, width: int = 1280, height: int = 720,
        fps: int = 25, gop_seconds: float = 3.0, num_frames: int = 32, short_side: int | None = None,
        repeats: int = 3) -> list[Row]:
    """Time the full decode, exact sampling and keyframe sampling of one long video; return the table rows.

    `short_side` defaults to the resize of the default feature spec's CNN (efficientnet_lite0: 256 px), the size
    `captioner extract` and `captioner caption` ask `read_frames` for.
    """
    import decord

    from captioner.models.encoder import LITE0_PREPROCESSING
    from captioner.video import probe_video, read_frames

    set_threads(threads)
    if smoke:
        seconds, width, height, gop_seconds, num_frames, repeats = 3, 160, 90, 0.2, 8, 1
    short_side = short_side or (64 if smoke else LITE0_PREPROCESSING.resize_size)
    path = long_video_path(seconds, width, height, fps, gop_seconds)
    size = f"{seconds}s {width}x{height} {fps} fps H.264, keyframe every {gop_seconds:g} s"

    count = 0

    def decode_everything():
        nonlocal count
        count = full_decode(path)

    full = median(timed(decode_everything, repeats=1 if not smoke else repeats))
    exact = median(timed(lambda: read_frames(path, num_frames, short_side), repeats=repeats, warmup=1))
    fast = median(timed(lambda: read_frames(path, num_frames, short_side, seek="keyframe"), repeats=repeats, warmup=1))
    probe = median(timed(lambda: probe_video(path), repeats=max(repeats, 3)))
    open_reader = median(timed(lambda: decord.VideoReader(str(path), num_threads=1), repeats=max(repeats, 3)))
    keys, mean_move, max_move = sample_shift(path, num_frames, fps)

    def ratio(t: float, target: float) -> str:
        value = full / t
        check = "" if smoke else f": {verdict(value, target)}"
        return f"{value:.1f}x faster than full decode (target >= {target:g}x){check}"

    what = f"{num_frames} frames at {short_side} px short side"
    return [
        Row("frame sampling: full decode, PyAV (baseline)", f"{full:.3f} s",
            "", f"{count} frames, {count / full:.0f} frames/s, 1 decoder thread; {size}"),
        Row("frame sampling: exact uniform (default)", f"{exact:.3f} s", ratio(exact, EXACT_TARGET),
            f"{what}; read_frames (decord seeks)"),
        Row("frame sampling: keyframe (--fast-seek)", f"{fast:.3f} s", ratio(fast, KEYFRAME_TARGET),
            f"{what}; {keys} keyframes; samples moved {mean_move:.2f} s on average, {max_move:.2f} s at most"),
        Row("frame sampling: of which probe_video", f"{probe * 1000:.1f} ms", f"{probe / exact:.1%} of exact", ""),
        Row("frame sampling: of which opening decord's reader", f"{open_reader * 1000:.1f} ms",
            f"{open_reader / exact:.1%} of exact", "builds the frame index from the container"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no targets checked")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, 0 = torch's default (default: 1)")
    parser.add_argument("--seconds", type=int, default=600, help="video length (default: %(default)s)")
    parser.add_argument("--width", type=int, default=1280, help="(default: %(default)s)")
    parser.add_argument("--height", type=int, default=720, help="(default: %(default)s)")
    parser.add_argument("--fps", type=int, default=25, help="(default: %(default)s)")
    parser.add_argument("--gop-seconds", type=float, default=3.0, help="keyframe interval (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled (default: %(default)s)")
    parser.add_argument("--short-side", type=int, help="decode size (default: the default CNN's, 256)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of each sampling mode (default: %(default)s)")
    args = parser.parse_args(argv)
    rows = run(smoke=args.smoke, threads=args.threads or None, seconds=args.seconds, width=args.width,
               height=args.height, fps=args.fps, gop_seconds=args.gop_seconds, num_frames=args.frames,
               short_side=args.short_side, repeats=args.repeats)
    print(f"machine: {machine_line()}")
    print(format_table(rows, title="Frame sampling from a long video"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
