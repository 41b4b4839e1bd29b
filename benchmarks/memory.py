"""Benchmark peak memory: captioning a 10-minute 720p video against a 10-second 720p clip, each in a fresh process.

    python benchmarks/memory.py                      # newest runs/synthetic checkpoint, else a tiny untrained one
    python benchmarks/memory.py --checkpoint my.ckpt
    python benchmarks/memory.py --smoke              # 1 s and 3 s 160x90 clips: checks the script runs

Each figure is the peak resident set size (`VmHWM` from /proc, `ru_maxrss` elsewhere) of a new Python process
that loads the checkpoint and captions one video with `VideoCaptioner.from_checkpoint(ckpt).caption([path])`, so it includes the interpreter,
torch and the CNN. The videos are the ones `frame_sampling.py` caches under `runs/benchmarks/`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Row, format_table, machine_line, newest_checkpoint, set_threads, verdict  # noqa: E402
from frame_sampling import long_video_path  # noqa: E402

RATIO_TARGET, LIMIT_MB = 1.2, 1536.0  # long within 20% of short; under 1.5 GB on CPU (issue 8)

# argv: checkpoint, threads, then `seek:path` per video; prints the peak after loading and after each caption
CAPTION = """
import json, os, resource, sys, torch
def peak():
    # VmHWM: this process's own peak. ru_maxrss is not: after a vfork + exec (what subprocess does) Linux starts it
    # at the parent's peak, so a big parent (run_all.py after the training benchmark) would be measured instead.
    if os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
if int(sys.argv[2]):
    torch.set_num_threads(int(sys.argv[2]))
from captioner import VideoCaptioner
model = VideoCaptioner.from_checkpoint(sys.argv[1])
loaded, peaks = peak(), []
for job in sys.argv[3:]:
    seek, path = job.split(":", 1)
    model.caption([path], seek=seek)
    peaks.append(peak())
print(json.dumps({"loaded_mb": loaded, "peak_mb": peaks}))
"""


def tiny_checkpoint(path: Path) -> Path:
    """An untrained captioner on efficientnet_lite0 (random weights): the memory is the decoding's and the CNN's."""
    import torch

    from captioner.checkpointing import build_model
    from captioner.config import CONFIG_KEY, CaptionerConfig, FeatureSpec
    from captioner.vocab import SPECIALS

    hp = {"vocab": [*SPECIALS, "a", "square", "moves"], "feature_dim": 1280, "embed_dim": 16, "hidden_dim": 32,
          "feature_spec": FeatureSpec(weights=None, num_frames=8).to_dict(), "beam_size": 1, "max_len": 5}
    config = CaptionerConfig.from_hparams(hp)
    model = build_model(hp, config)
    torch.save({"hyper_parameters": hp, CONFIG_KEY: config.to_dict(),
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def peak_memory(checkpoint: Path, jobs: list[tuple[str, Path]], threads: int) -> dict:
    """A fresh process loads `checkpoint` and captions each `(seek, video)` in turn.

    Returns:
        `{"loaded_mb": peak RSS after loading, "peak_mb": [peak RSS after each video]}` in MiB.
    """
    args = [f"{seek}:{video}" for seek, video in jobs]
    proc = subprocess.run([sys.executable, "-c", CAPTION, str(checkpoint), str(threads), *args],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"captioning {args} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(smoke: bool = False, threads: int | None = 1, checkpoint: str | None = None, long_seconds: int = 600,
        short_seconds: int = 10, width: int = 1280, height: int = 720, fps: int = 25) -> list[Row]:
    set_threads(threads)
    if smoke:
        long_seconds, short_seconds, width, height = 3, 1, 160, 90
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(checkpoint) if checkpoint else (None if smoke else newest_checkpoint())
        which = str(ckpt.relative_to(REPO) if ckpt and ckpt.is_relative_to(REPO) else ckpt)
        if ckpt is None:
            ckpt, which = tiny_checkpoint(Path(tmp) / "tiny.ckpt"), "tiny untrained efficientnet_lite0 captioner"
        long_video = long_video_path(long_seconds, width, height, fps, 3.0 if not smoke else 0.2)
        short_video = long_video_path(short_seconds, width, height, fps, 3.0 if not smoke else 0.2)
        jobs = [("exact", short_video), ("exact", long_video), ("keyframe", long_video)]
        if smoke:  # one process for all three (peaks only grow, so the ratios still bound the growth): quick
            found = peak_memory(ckpt, jobs, threads or 0)
            loaded, (short, long, fast) = found["loaded_mb"], found["peak_mb"]
        else:
            found = [peak_memory(ckpt, [job], threads or 0) for job in jobs]
            loaded, (short, long, fast) = found[0]["loaded_mb"], [f["peak_mb"][0] for f in found]
    ratio = long / short
    check = "" if smoke else f": {verdict(ratio, RATIO_TARGET, higher_is_better=False)}"
    limit = "" if smoke else f": {verdict(long, LIMIT_MB, higher_is_better=False)}"
    process = "one process for the three" if smoke else "a fresh process each"
    size = f"{width}x{height} {fps} fps"
    return [
        Row(f"peak memory: caption a {short_seconds} s clip", f"{short:.0f} MiB", "",
            f"{size}; {loaded:.0f} MiB after loading the checkpoint ({which}); {process}"),
        Row(f"peak memory: caption a {long_seconds} s video", f"{long:.0f} MiB",
            f"{ratio:.2f}x the short clip's (target <= {RATIO_TARGET:g}x){check}; < {LIMIT_MB:.0f} MiB{limit}",
            f"{size}; exact sampling"),
        Row(f"peak memory: caption a {long_seconds} s video, --fast-seek", f"{fast:.0f} MiB",
            f"{fast / short:.2f}x the short clip's", "keyframe sampling"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny videos and an untrained model, no targets checked")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, 0 = torch's default (default: 1)")
    parser.add_argument("--checkpoint", help="captioner checkpoint (default: the newest runs/synthetic one, else a "
                                             "tiny untrained one)")
    parser.add_argument("--long-seconds", type=int, default=600, help="(default: %(default)s)")
    parser.add_argument("--short-seconds", type=int, default=10, help="(default: %(default)s)")
    parser.add_argument("--width", type=int, default=1280, help="(default: %(default)s)")
    parser.add_argument("--height", type=int, default=720, help="(default: %(default)s)")
    parser.add_argument("--fps", type=int, default=25, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    rows = run(smoke=args.smoke, threads=args.threads or None, checkpoint=args.checkpoint,
               long_seconds=args.long_seconds, short_seconds=args.short_seconds, width=args.width,
               height=args.height, fps=args.fps)
    print(f"machine: {machine_line()}")
    print(format_table(rows, title="Peak memory, captioning one video"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
