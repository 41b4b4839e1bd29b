"""Benchmark captioning on this machine: warm latency for one 10-second clip, CLI cold start, folder throughput.

    python benchmarks/caption_latency.py                      # newest runs/synthetic checkpoint, 50-clip folder
    python benchmarks/caption_latency.py --checkpoint my.ckpt --device cuda
    python benchmarks/caption_latency.py --smoke              # tiny sizes: checks the script runs, not the speed

The clips are generated (PyAV, H.264) into a temporary folder: one long clip (10 s, 25 fps, 320x320 by default)
and a folder of short clips like the synthetic dataset's (2 s, 12 fps, 160x160). Timings are wall-clock medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RUNS_GLOB = "runs/synthetic/logs/version_*/checkpoints/epoch*.ckpt"


def newest_checkpoint() -> Path | None:
    found = sorted(REPO.glob(RUNS_GLOB), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def write_clip(path: Path, index: int, side: int, num_frames: int, fps: int) -> Path:
    """A synthetic clip of moving shapes (the training data's look), `num_frames / fps` seconds long."""
    from captioner.data.synthetic import COLORS, MOTIONS, SHAPES, SceneObject, render_clip, write_mp4

    rng = np.random.default_rng(index)
    obj = SceneObject(sorted(COLORS)[index % len(COLORS)], SHAPES[index % len(SHAPES)], ("small", "big")[index % 2])
    write_mp4(render_clip([obj], MOTIONS[index % len(MOTIONS)], rng, side=side, num_frames=num_frames), path, fps=fps)
    return path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device) -> str:
    import torch

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores visible, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {device.type}: {where}")


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run_cli(args: list[str]) -> float:
    """Wall time of one `python -m captioner caption ...` process (fails loudly if the command fails)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "captioner", "caption", *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the CLI failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return elapsed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help=f"checkpoint to benchmark (default: the newest {RUNS_GLOB})")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=8, help="videos per batch for the folder")
    p.add_argument("--num-clips", type=int, default=50, help="clips in the folder")
    p.add_argument("--clip-seconds", type=float, default=10.0, help="length of the long clip")
    p.add_argument("--fps", type=int, default=25, help="frame rate of the long clip")
    p.add_argument("--side", type=int, default=320, help="frame size of the long clip (square)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of the warm latency (median reported)")
    p.add_argument("--cold-repeats", type=int, default=3, help="CLI processes started for the cold start")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's choice)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that the script runs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.num_clips, args.clip_seconds, args.fps, args.side = 3, 1.0, 8, 64
        args.repeats, args.cold_repeats, args.batch_size = 1, 1, 2
    ckpt = args.checkpoint or newest_checkpoint()
    if ckpt is None or not Path(ckpt).is_file():
        print(f"No checkpoint {'at ' + str(ckpt) if ckpt else 'under ' + RUNS_GLOB}: train one first with "
              "`python scripts/train.py`, or pass --checkpoint.", file=sys.stderr)
        return 2

    from captioner import VideoCaptioner
    from captioner.inference import caption_videos, resolve_device

    device = resolve_device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    short_frames, short_side = (8, 48) if args.smoke else (24, 160)
    with tempfile.TemporaryDirectory(prefix="caption-bench-") as tmp:
        tmp = Path(tmp)
        long_frames = max(1, round(args.clip_seconds * args.fps))
        long_clip = write_clip(tmp / "long.mp4", 0, args.side, long_frames, args.fps)
        folder = tmp / "folder"
        folder.mkdir()
        for i in range(args.num_clips):
            write_clip(folder / f"clip{i:03d}.mp4", i + 1, short_side, short_frames, 12)

        load_start = time.perf_counter()
        model = VideoCaptioner.from_checkpoint(ckpt, map_location=device)
        model.caption([long_clip])  # builds the CNN and warms up kernels
        load_s = time.perf_counter() - load_start

        def sync():
            if device.type == "cuda":
                import torch

                torch.cuda.synchronize()

        def caption_long():
            model.caption([long_clip])
            sync()

        warm = timed(caption_long, args.repeats)
        read = timed(lambda: model.read_clip(long_clip), args.repeats)
        folder_s = timed(lambda: (list(caption_videos(model, [folder], batch_size=args.batch_size)), sync()), 1)[0]
        cli_args = ["--checkpoint", str(ckpt), "--device", args.device, "--batch-size", str(args.batch_size)]
        cli_args += ["--threads", str(args.threads)] if args.threads else []
        cold = [run_cli([str(long_clip), *cli_args]) for _ in range(args.cold_repeats)]
        cli_folder_s = run_cli([str(folder), *cli_args])

    n = args.num_clips
    long_desc = f"{args.clip_seconds:g} s clip, {args.side}x{args.side} @ {args.fps} fps"
    rows = [
        ("load checkpoint + first caption", f"{load_s:.2f} s", "once per process"),
        (f"warm latency, one {long_desc}", f"{statistics.median(warm):.3f} s",
         f"median of {len(warm)}, model loaded; {model.spec.num_frames} frames sampled"),
        ("  of which: open + decode the sampled frames", f"{statistics.median(read):.3f} s", "decord, CPU"),
        (f"cold start, CLI, one {long_desc}", f"{statistics.median(cold):.2f} s",
         f"median of {len(cold)} `python -m captioner caption` processes"),
        (f"folder of {n} clips, in process", f"{n / folder_s:.1f} videos/s",
         f"{folder_s:.2f} s, batch size {args.batch_size}; clips {short_frames / 12:.2g} s, {short_side}px"),
        (f"folder of {n} clips, CLI", f"{n / cli_folder_s:.1f} videos/s", f"{cli_folder_s:.2f} s incl. start-up"),
    ]
    print(f"checkpoint: {ckpt}")
    print(f"backbone:   {model.spec.backbone} (crop {model.encoder.preprocessing.crop_size}px), "
          f"generation {model.generate_defaults}")
    print(f"machine:    {machine_line(device)}\n")
    widths = [max(len(r[i]) for r in rows + [("measurement", "result", "notes")]) for i in range(3)]
    print(" | ".join(h.ljust(w) for h, w in zip(("measurement", "result", "notes"), widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
