"""Benchmark timed captions of a long video: a 10-minute 720p video in 10-s windows against decoding its frames alone.

    python benchmarks/segments.py                   # 10 minutes, 1280x720, 25 fps, 10-s windows
    python benchmarks/segments.py --minutes 0.2     # a smoke run: 12 s
    python benchmarks/segments.py --checkpoint my.ckpt

Three fresh processes read the same video (moving shapes over a panning texture, made with PyAV once and cached in
the temporary folder): one captions it with `VideoCaptioner.caption_segments(path, 10.0)` and writes the WebVTT
file; one decodes exactly the frames the first one samples (`SegmentReader.segment_frames`, the same one forward
decode) and does nothing else; one runs the frame CNN alone on those frames (decoded first, untimed), in the
chunks captioning uses (`CNN_FRAMES`). Captioning decodes in a background thread while the CNN encodes, so its time
is bounded by the larger of the two, not their sum. Printed side by side: cues (one per window, none empty), seconds
of each, the ratio to decoding alone (target <= 1.5x) and the captioning process's peak memory (target < 1.5 GB).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Row, format_table, machine_line, newest_checkpoint, verdict  # noqa: E402
from frame_sampling import long_video_path  # noqa: E402
from memory import tiny_checkpoint  # noqa: E402

RATIO_TARGET, LIMIT_MB = 1.5, 1536.0
CACHE = Path(tempfile.gettempdir()) / "captioner-benchmarks"

# argv: mode (caption | decode | cnn), checkpoint, video, window seconds, threads, vtt path; prints one JSON line
JOB = """
import json, os, resource, sys, time, torch
def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
mode, ckpt, video, seconds, threads, vtt = sys.argv[1:7]
torch.set_num_threads(int(threads))
from captioner import VideoCaptioner
from captioner.segments import CNN_FRAMES, SegmentReader, plan_segments
from captioner.subtitles import write_subtitles
model = VideoCaptioner.from_checkpoint(ckpt)
model.encoder
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
start, cpu0 = time.perf_counter(), cpu()
if mode == "caption":
    results = model.caption_segments(video, float(seconds))
    write_subtitles(vtt, [(r.start, r.end, r.caption) for r in results])
    out = {"cues": len(results), "empty": sum(not r.caption for r in results)}
else:
    reader = SegmentReader(video, model.encoder.preprocessing.resize_size)
    segments = plan_segments(reader, float(seconds))
    clips = reader.segment_frames(segments, model.spec.num_frames)
    if mode == "cnn":  # the frames first, untimed; then only the CNN, in the captioning's chunks
        clips, step = list(clips), max(1, CNN_FRAMES // model.spec.num_frames)
        start, cpu0 = time.perf_counter(), cpu()
        for b in range(0, len(clips), step):
            model.encoder.eval().encode_clips(clips[b : b + step])
    out = {"cues": len(segments), "frames": sum(len(c) for c in clips)}
out.update(seconds=time.perf_counter() - start, peak_mb=peak(), cpu=cpu() - cpu0)
print(json.dumps(out))
"""


def job(mode: str, checkpoint: Path, video: Path, seconds: float, threads: int, vtt: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", JOB, mode, str(checkpoint), str(video), str(seconds), str(threads),
                           str(vtt)], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(minutes: float = 10.0, window: float = 10.0, width: int = 1280, height: int = 720, fps: int = 25,
        threads: int = 1, checkpoint: str | None = None, smoke: bool = False) -> list[Row]:
    """The rows; `smoke`: a 12-second video (what `run_all.py --smoke` runs)."""
    minutes = 0.2 if smoke else minutes
    seconds = max(1, round(minutes * 60))
    video = long_video_path(seconds, width, height, fps, 3.0, folder=CACHE)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(checkpoint) if checkpoint else newest_checkpoint()
        which = str(ckpt)
        if ckpt is None:
            ckpt, which = tiny_checkpoint(Path(tmp) / "tiny.ckpt"), "tiny untrained efficientnet_lite0 captioner"
        vtt = Path(tmp) / "film.vtt"
        decoded = job("decode", ckpt, video, window, threads, vtt)
        cnn = job("cnn", ckpt, video, window, threads, vtt)
        captioned = job("caption", ckpt, video, window, threads, vtt)
        import webvtt

        read_back = len(webvtt.read(str(vtt)).captions)
    expected = max(1, math.ceil(seconds / window - 1e-9))
    ratio = captioned["seconds"] / decoded["seconds"]
    size = f"{seconds} s {width}x{height} {fps} fps, {window:g}-s windows; {which}; {threads} threads"
    return [
        Row("segments: cues", f"{captioned['cues']} ({read_back} read back from the .vtt)",
            f"expected {expected}, {captioned['empty']} empty: "
            f"{'PASS' if captioned['cues'] == read_back == expected and not captioned['empty'] else 'FAIL'}", size),
        Row("segments: decode the sampled frames alone", f"{decoded['seconds']:.1f} s", "",
            f"{decoded['frames']} frames, one forward decode; {decoded['cpu']:.1f} CPU s; "
            f"peak {decoded['peak_mb']:.0f} MiB"),
        Row("segments: the CNN alone on those frames", f"{cnn['seconds']:.1f} s",
            f"{cnn['seconds'] / decoded['seconds']:.2f}x decoding alone",
            f"{cnn['cpu']:.1f} CPU s; the bound of captioning when it exceeds decoding"),
        Row("segments: caption_segments", f"{captioned['seconds']:.1f} s",
            f"{ratio:.2f}x decoding alone (target <= {RATIO_TARGET:g}x): "
            f"{verdict(ratio, RATIO_TARGET, higher_is_better=False)}",
            f"decode (a thread) overlapping CNN, decoder, .vtt written; {captioned['cpu']:.1f} CPU s; "
            f"{captioned['seconds'] / max(decoded['seconds'], cnn['seconds']):.2f}x the larger of the two alone"),
        Row("segments: peak memory, captioning", f"{captioned['peak_mb']:.0f} MiB",
            f"< {LIMIT_MB:.0f} MiB: {verdict(captioned['peak_mb'], LIMIT_MB, higher_is_better=False)}",
            "the whole process: interpreter, torch, CNN, frames of a batch of segments"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="video length (default: %(default)s)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per segment (default: %(default)s)")
    parser.add_argument("--width", type=int, default=1280, help="(default: %(default)s)")
    parser.add_argument("--height", type=int, default=720, help="(default: %(default)s)")
    parser.add_argument("--fps", type=int, default=25, help="(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; the decoding thread takes one more core (default: %(default)s)")
    parser.add_argument("--checkpoint", help="captioner checkpoint (default: the newest runs/synthetic one, else a "
                                             "tiny untrained one)")
    args = parser.parse_args(argv)
    rows = run(args.minutes, args.window, args.width, args.height, args.fps, args.threads, args.checkpoint)
    print(f"machine: {machine_line()}")
    print(format_table(rows, title="Timed captions of a long video (--segments)"))
    return 0 if "FAIL" not in rows[0].ratio else 1


if __name__ == "__main__":
    raise SystemExit(main())
