"""Benchmark captioning on this machine: warm latency for one 10-second clip, CLI cold start, folder throughput.

    python benchmarks/caption_latency.py                      # newest runs/synthetic checkpoint, 50-clip folder
    python benchmarks/caption_latency.py --checkpoint my.ckpt --device cuda
    python benchmarks/caption_latency.py --smoke              # tiny sizes: checks the script runs, not the speed

The clips are generated (PyAV, H.264) into a temporary folder: one long clip (10 s, 25 fps, 320x320 by default)
and a folder of short clips like the synthetic dataset's (2 s, 12 fps, 160x160). Timings are wall-clock medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RUNS_GLOB, Row, format_table, machine_line, newest_checkpoint, timed, verdict  # noqa: E402


def write_clip(path: Path, index: int, side: int, num_frames: int, fps: int) -> Path:
    """A synthetic clip of moving shapes (the training data's look), `num_frames / fps` seconds long."""
    from captioner.data.synthetic import COLORS, MOTIONS, SHAPES, SceneObject, render_clip, write_mp4

    rng = np.random.default_rng(index)
    obj = SceneObject(sorted(COLORS)[index % len(COLORS)], SHAPES[index % len(SHAPES)], ("small", "big")[index % 2])
    write_mp4(render_clip([obj], MOTIONS[index % len(MOTIONS)], rng, side=side, num_frames=num_frames), path, fps=fps)
    return path


COLD_TARGET = 1.5  # a cold `captioner caption` within this many times `python -c "import torch, torchvision"`
HELP_TARGET_S = 1.0  # `captioner --help`


def run_cli(args: list[str], command: tuple[str, ...] = ("-m", "captioner", "caption")) -> float:
    """Wall time of one `python -m captioner caption ...` process (fails loudly if the command fails)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *command, *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the CLI failed ({proc.returncode}):\n{proc.stderr.strip()}")
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


class NoCheckpoint(RuntimeError):
    pass


def run(smoke: bool = False, threads: int | None = None, device: str = "auto", checkpoint: Path | None = None,
        batch_size: int = 8, num_clips: int = 50, clip_seconds: float = 10.0, fps: int = 25, side: int = 320,
        repeats: int = 5, cold_repeats: int = 3, header: list | None = None) -> list[Row]:
    """The measurements as rows; `header` (a list) receives the checkpoint, backbone and machine lines.

    Raises:
        NoCheckpoint: no checkpoint was given and none was found under `runs/synthetic`.
    """
    if smoke:
        num_clips, clip_seconds, fps, side = 3, 1.0, 8, 64
        repeats, cold_repeats, batch_size = 1, 1, 2
    ckpt = checkpoint or newest_checkpoint()
    if ckpt is None or not Path(ckpt).is_file():
        raise NoCheckpoint(f"No checkpoint {'at ' + str(ckpt) if ckpt else 'under ' + RUNS_GLOB}: train one first "
                           "with `python scripts/train.py`, or pass --checkpoint.")

    from captioner import VideoCaptioner
    from captioner.device import resolve_device

    device = resolve_device(device)
    if threads:
        import torch

        torch.set_num_threads(threads)
    short_frames, short_side = (8, 48) if smoke else (24, 160)
    with tempfile.TemporaryDirectory(prefix="caption-bench-") as tmp:
        tmp = Path(tmp)
        long_frames = max(1, round(clip_seconds * fps))
        long_clip = write_clip(tmp / "long.mp4", 0, side, long_frames, fps)
        folder = tmp / "folder"
        folder.mkdir()
        for i in range(num_clips):
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

        warm = timed(caption_long, repeats)
        read = timed(lambda: model.read_clip(long_clip), repeats)
        folder_s = timed(lambda: (list(model.caption_results([folder], batch_size=batch_size)), sync()), 1)[0]
        cli_args = ["--checkpoint", str(ckpt), "--device", device.type, "--batch-size", str(batch_size)]
        cli_args += ["--threads", str(threads)] if threads else []
        cold, imports, helps = [], [], []
        for _ in range(cold_repeats):  # interleaved: a busy moment of a shared machine hits all three alike
            imports.append(run_cli([], ("-c", "import torch, torchvision")))
            cold.append(run_cli([str(long_clip), *cli_args]))
            helps.append(run_cli(["--help"], ("-m", "captioner")))
        cli_folder_s = run_cli([str(folder), *cli_args])

    n = num_clips
    cold_ratio = statistics.median(cold) / statistics.median(imports)
    long_desc = f"{clip_seconds:g} s clip, {side}x{side} @ {fps} fps"
    if header is not None:
        header += [f"checkpoint: {ckpt}",
                   f"backbone:   {model.spec.backbone} (crop {model.encoder.preprocessing.crop_size}px), "
                   f"generation {model.generation.to_dict()}",
                   f"machine:    {machine_line(device)}"]
    return [
        Row("load checkpoint + first caption", f"{load_s:.2f} s", "", "once per process"),
        Row(f"warm latency, one {long_desc}", f"{statistics.median(warm):.3f} s", "",
            f"median of {len(warm)}, model loaded; {model.spec.num_frames} frames sampled"),
        Row("  of which: open + decode the sampled frames", f"{statistics.median(read):.3f} s",
            f"{statistics.median(read) / statistics.median(warm):.0%} of the warm latency", "decord, CPU"),
        Row(f"cold start, CLI, one {long_desc}", f"{statistics.median(cold):.2f} s",
            f"{cold_ratio:.2f}x importing torch + torchvision (target <= {COLD_TARGET}x): "
            f"{verdict(cold_ratio, COLD_TARGET, higher_is_better=False)}",
            f"median of {len(cold)} `python -m captioner caption` processes; "
            f"{statistics.median(cold) / statistics.median(warm):.0f}x the warm latency"),
        Row("  baseline: `python -c \"import torch, torchvision\"`", f"{statistics.median(imports):.2f} s", "",
            f"median of {len(imports)}, interleaved with the CLI's"),
        Row("`captioner --help`", f"{statistics.median(helps):.2f} s",
            f"target < {HELP_TARGET_S:g} s: {verdict(statistics.median(helps), HELP_TARGET_S, higher_is_better=False)}",
            f"median of {len(helps)} `python -m captioner --help` processes"),
        Row(f"folder of {n} clips, in process", f"{n / folder_s:.1f} videos/s", "",
            f"{folder_s:.2f} s, batch size {batch_size}; clips {short_frames / 12:.2g} s, {short_side}px"),
        Row(f"folder of {n} clips, CLI", f"{n / cli_folder_s:.1f} videos/s",
            f"{folder_s / cli_folder_s:.0%} of in-process speed", f"{cli_folder_s:.2f} s incl. start-up"),
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    header: list[str] = []
    try:
        rows = run(args.smoke, args.threads, args.device, args.checkpoint, args.batch_size, args.num_clips,
                   args.clip_seconds, args.fps, args.side, args.repeats, args.cold_repeats, header)
    except NoCheckpoint as err:
        print(err, file=sys.stderr)
        return 2
    print("\n".join(header) + "\n")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
