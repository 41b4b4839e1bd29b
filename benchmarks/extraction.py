"""Benchmark feature extraction: frames/s end to end (decode + preprocess + CNN) against the CNN alone in memory.

    python benchmarks/extraction.py                                   # CPU, the main job's MobileNetV2, 96 clips
    python benchmarks/extraction.py --device cuda --workers 8 --batch-size 32 --num-clips 400
    python benchmarks/extraction.py --smoke                           # tiny sizes: checks the script runs

H.264 clips (PyAV, 320x240, 3 s at 25 fps by default: moving shapes, as the synthetic dataset) are written to a
temporary folder. End to end is `captioner.features.extract.run_extraction`, what `captioner extract` runs: Lightning's
predict loop, `CroppedClips` decoding and cropping in DataLoader workers, `FeatureExtractor` (channels-last, the
precision `captioner extract` picks) and the writer of the feature cache. Two references at the same batch size
and workers: the same CNN on normalised frames already in memory (on the device, same precision), and decoding and
cropping alone (the same DataLoader, no CNN). The bound is the slower of the two (they overlap in the real run).
Throughputs are steady state, over the batches after the first; the first batch (workers starting, first decode,
cuDNN's autotune) is reported apart as the warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

try:
    from common import (Row, format_table, imagenet_weights, machine_line, median, quiet_lightning, set_threads,
                        share_of_bound, verdict)
except ImportError:  # imported as benchmarks.extraction
    from benchmarks.common import (Row, format_table, imagenet_weights, machine_line, median, quiet_lightning,
                                   set_threads, share_of_bound, verdict)

TARGET = 0.80  # end to end, as a share of its bound (min of decoding alone, CNN alone), on a GPU or a CPU
DISTINCT_CLIPS = 6  # rendered and encoded; the other clips are copies (decoding costs the same)


def write_clips(folder: Path, num_clips: int, width: int, height: int, seconds: float, fps: int) -> list[Path]:
    """`num_clips` H.264 files of moving shapes, `width` x `height`, `seconds` long."""
    import numpy as np

    from captioner.data.synthetic import COLORS, MOTIONS, SHAPES, SceneObject, render_clip, write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    side, frames = max(width, height), max(1, round(seconds * fps))
    top, left = (side - height) // 2, (side - width) // 2
    paths = []
    for i in range(num_clips):
        path = folder / f"clip{i:04d}.mp4"
        if i < DISTINCT_CLIPS:
            rng = np.random.default_rng(i)
            obj = SceneObject(sorted(COLORS)[i % len(COLORS)], SHAPES[i % len(SHAPES)], ("small", "big")[i % 2])
            video = render_clip([obj], MOTIONS[i % len(MOTIONS)], rng, side=side, num_frames=frames)
            write_mp4(video[:, top:top + height, left:left + width], path, fps=fps)
        else:
            shutil.copyfile(paths[i % DISTINCT_CLIPS], path)
        paths.append(path)
    return paths


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


MIN_STEADY_BATCHES = 10  # fewer batches after the first give no GPU verdict: one slow batch would decide it


class BatchTimer:
    """A callback timing the predict loop: its warm-up (from its start to the end of the first batch: workers
    starting, the first decode, cuDNN's autotune when `cudnn.benchmark` is on) apart from its steady state (from
    the end of the first batch to its end, the last writes included).

    The GPU is synchronised only at those points, so that batches still overlap as they do untimed.
    `cudnn_benchmark` (None: leave it) overrides the `benchmark=True` that `run_extraction`'s Trainer sets.
    """

    def __init__(self, device: str, cudnn_benchmark: bool | None = None):
        import pytorch_lightning as pl
        import torch

        timer = self

        class _Callback(pl.Callback):
            def on_predict_start(self, trainer, pl_module):
                if cudnn_benchmark is not None:
                    torch.backends.cudnn.benchmark = cudnn_benchmark
                timer.begin = time.perf_counter()

            def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
                if timer.start is None:
                    _sync(device)
                    timer.start = time.perf_counter()
                else:
                    timer.clips += len(batch["ids"])
                    timer.batches += 1

            def on_predict_end(self, trainer, pl_module):  # runs after the FeatureWriter's (listed first)
                _sync(device)
                timer.end = time.perf_counter()

        self.begin: float | None = None
        self.start: float | None = None
        self.end: float | None = None
        self.clips = 0
        self.batches = 0  # steady-state batches: all but the first
        self.callback = _Callback()

    def clips_per_second(self) -> float:
        """Steady state: the clips of batches 2..N over the time from the end of batch 1 to the end."""
        return self.clips / (self.end - self.start) if self.clips else float("nan")

    def warmup_seconds(self) -> float:
        """From the predict loop's start to the end of its first batch."""
        return self.start - self.begin


def end_to_end(paths: list[Path], spec, cache_root: Path, device: str, precision: str, batch_size: int,
               workers: int, cudnn_benchmark: bool | None = None) -> dict:
    """`run_extraction` over `paths` into an empty cache: steady clips/s, its batches, the warm-up (first batch)
    and the whole call's seconds."""
    from captioner.features.cache import FeatureCache
    from captioner.features.extract import run_extraction

    cache = FeatureCache(cache_root, spec)
    items = [(p.stem, str(p)) for p in paths]
    timer = BatchTimer(device, cudnn_benchmark)
    start = time.perf_counter()
    failures = run_extraction(spec, items, cache, accelerator="gpu" if device == "cuda" else "cpu",
                              precision=precision, batch_size=batch_size, num_workers=workers, progress=False,
                              callbacks=[timer.callback])
    whole = time.perf_counter() - start
    if failures or not all(cache.has(vid) for vid, _ in items):
        raise RuntimeError(f"extraction failed: {failures[:3] if failures else 'clips missing from the cache'}")
    return dict(steady=timer.clips_per_second(), batches=timer.batches, warmup=timer.warmup_seconds(), whole=whole)


def decode_only(paths: list[Path], spec, preprocessing, batch_size: int, workers: int) -> float:
    """Steady clips/s of the extraction DataLoader alone: decode, resize, crop, collate in `workers` workers."""
    from captioner.features.extract import clip_loader

    loader = clip_loader([(p.stem, str(p)) for p in paths], spec, preprocessing, batch_size, workers)
    marks = []
    for batch in loader:
        marks.append((time.perf_counter(), len(batch["ids"])))
    (start, _), *rest = marks
    return sum(n for _, n in rest) / (rest[-1][0] - start)


def cnn_alone(paths: list[Path], model, device: str, precision: str, batch_size: int, batches: int) -> float:
    """Clips/s of the extraction CNN on cropped frames in memory: `encode_cropped` as in the real run (normalise,
    channels-last, the spec's bf16 autocast), inside the Lightning precision's autocast."""
    import torch

    from captioner.features.extract import CroppedClips

    spec = model.spec
    model = model.to(device).eval()
    clips = CroppedClips([(p.stem, str(p)) for p in paths[:batch_size]], spec.num_frames, model.preprocessing)
    frames = torch.stack([clips[i][1] for i in range(len(clips))])  # (B, T, 3, S, S) uint8
    frames = frames.repeat(-(-batch_size // len(frames)), 1, 1, 1, 1)[:batch_size].to(device)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    autocast = torch.autocast(torch.device(device).type, dtype=dtype, enabled="mixed" in precision)
    with torch.inference_mode(), autocast:
        model.encoder.encode_cropped(frames)  # warm-up (cuDNN picks its kernels)
        _sync(device)
        marks = [time.perf_counter()]
        for _ in range(batches):
            model.encoder.encode_cropped(frames)
            _sync(device)
            marks.append(time.perf_counter())
    return batch_size / median([b - a for a, b in zip(marks, marks[1:])])


def bound_row_text(e2e: float, decoded: float, cnn: float, device: str, batches: int) -> tuple[float, str, str]:
    """End to end against its bound, min(decode alone, CNN alone): (share, which one bounds, ratio and verdict).

    Decoding in the workers and the CNN overlap, so end to end can reach the slower of the two, never more; on a
    GPU the CNN is often the faster one and decoding sets the bound. The verdict is INVALID when end to end beats
    the bound by more than the noise band, or when too few steady batches were timed to judge.
    """
    bound, which = (decoded, "decode + crop") if decoded < cnn else (cnn, "CNN")
    ratio, invalid = share_of_bound(e2e, bound)
    if invalid is None and batches < MIN_STEADY_BATCHES:
        invalid = f"{batches} steady-state batches, fewer than {MIN_STEADY_BATCHES}: give more --num-clips"
    target = f"target >= {TARGET:.0%}: {verdict(ratio, TARGET, invalid=invalid)}"
    return ratio, which, f"{ratio:.0%} of the bound, {which} alone ({target})"


def main_cnn(backbone: str | None, num_frames: int, image_size: int | None):
    """The spec of `backbone` with its ImageNet weights; by default the main job's CNN (FeatureSpec's default)."""
    from captioner.config import FeatureSpec

    if backbone is None or backbone == FeatureSpec.backbone:
        return FeatureSpec(num_frames=num_frames, image_size=image_size)
    return FeatureSpec(backbone=backbone, weights=imagenet_weights(backbone), num_frames=num_frames,
                       image_size=image_size)


def run(smoke: bool = False, threads: int | None = 1, device: str = "cpu", num_clips: int | None = None,
        batch_size: int | None = None, workers: int | None = None, precision: str | None = None,
        backbone: str | None = None, image_size: int | None = None, num_frames: int = 8, width: int = 320,
        height: int = 240, seconds: float = 3.0, fps: int = 25, cudnn_benchmark: str = "on",
        cnn_precisions: tuple[str, ...] | None = None) -> list[Row]:
    """Extract features of generated clips end to end, then time the CNN alone and decoding alone.

    `cudnn_benchmark` (a GPU setting): `on` as `captioner extract` runs, `off`, or `both` (end to end and the CNN
    timed each way: autotune's cost in the warm-up against its gain in the steady state).
    `cnn_precisions`: the feature specs' `precision`s measured side by side (default on a CPU: `32`, and `bf16`
    where the CPU has it natively; on a GPU: `auto`).
    """
    import os

    import pytorch_lightning as pl
    import torch

    from captioner.config import FeatureSpec
    from captioner.config import cpu_has_native_bf16
    from captioner.features.extract import FeatureExtractor, resolve_precision

    set_threads(threads)
    if cnn_precisions is None:
        cnn_precisions = ("auto",) if device == "cuda" else ("32", "bf16") if cpu_has_native_bf16() else ("32",)
    if smoke:
        num_clips, batch_size, width, height, seconds, fps = num_clips or 6, batch_size or 2, 64, 48, 1.0, 8
        workers = 2 if workers is None else workers
        spec = FeatureSpec(backbone=backbone or "resnet18", weights=None, num_frames=2, image_size=image_size or 32)
    elif device == "cuda":  # enough batches for a steady state: the first 400-clip runs had 12 of them
        num_clips, batch_size = num_clips or 1600, batch_size or 32
        workers = min(12, max((os.cpu_count() or 2) - 2, 1)) if workers is None else workers
        spec = main_cnn(backbone, num_frames, image_size)
    else:
        num_clips, batch_size = num_clips or 96, batch_size or 8
        workers = 2 if workers is None else workers
        spec = main_cnn(backbone, num_frames, image_size)
    precision = resolve_precision(precision or "auto", "gpu" if device == "cuda" else "cpu")
    modes = {"on": [True], "off": [False], "both": [True, False]}[cudnn_benchmark] if device == "cuda" else [None]
    pl.seed_everything(0, verbose=False)
    t = spec.num_frames
    clip_desc = f"{num_clips} clips {width}x{height}, {seconds:g} s @ {fps} fps"
    rows = []
    with tempfile.TemporaryDirectory(prefix="extraction-bench-") as tmp:
        tmp = Path(tmp)
        paths = write_clips(tmp / "clips", num_clips, width, height, seconds, fps)
        decoded = decode_only(paths, spec, FeatureExtractor(spec).preprocessing, batch_size, workers)
        fastest_cnn = 0.0  # clips/s: the decode row compares decoding with the fastest CNN measured
        for cnn_precision, mode in [(c, m) for c in cnn_precisions for m in modes]:
            spec = dataclasses.replace(spec, precision=cnn_precision)
            model = FeatureExtractor(spec)
            if mode is not None:
                torch.backends.cudnn.benchmark = mode
            e2e = end_to_end(paths, spec, tmp / f"features-{mode}", device, precision, batch_size, workers, mode)
            t = spec.num_frames
            if mode is not None:
                torch.backends.cudnn.benchmark = mode  # the Trainer set it to True
            cnn = cnn_alone(paths, model, device, precision, batch_size, batches=max(3, num_clips // batch_size - 1))
            fastest_cnn = max(fastest_cnn, cnn)
            _, which, ratio_text = bound_row_text(e2e["steady"], decoded, cnn, device, e2e["batches"])
            arithmetic = "bf16 CNN" if spec.precision == "bf16" else precision
            where = f"{device}, {arithmetic}, batch {batch_size} clips x {t} frames"
            tuned = "" if mode is None else f", cudnn.benchmark {'on' if mode else 'off'}"
            rows += [
                Row(f"extraction end to end ({where}, {workers} workers{tuned})", f"{e2e['steady'] * t:.1f} frames/s",
                    ratio_text, f"steady state: {e2e['batches']} batches after the first; {spec.key}; {clip_desc}"),
                Row(f"extraction warm-up: first batch ({device}{tuned})", f"{e2e['warmup']:.2f} s", "",
                    f"workers start, first decode{', cuDNN autotune' if mode else ''}; whole run incl. start-up "
                    f"{e2e['whole']:.1f} s"),
                Row(f"extraction: CNN alone ({where}{tuned})", f"{cnn * t:.1f} frames/s",
                    "the bound" if which == "CNN" else f"{cnn / decoded:.2f}x decoding's rate",
                    "normalised frames in memory, channels-last; median batch"),
            ]
    decode_notes = "the extraction DataLoader without the CNN (decord)"
    cnn = fastest_cnn
    if decoded < cnn:  # decode-bound: what would raise it (benchmarks/README.md, Results)
        decode_notes += ("; decode-bound: more workers, fewer decoder threads per worker, a smaller decode "
                         "resolution would raise it")
    rows.append(Row(f"extraction: decode + crop alone ({workers} workers, batch {batch_size})",
                    f"{decoded * t:.1f} frames/s",
                    "the bound" if decoded < cnn else f"{decoded / cnn:.2f}x the CNN's rate",
                    decode_notes))
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--precision", default=None,
                   help="Lightning precision, e.g. bf16-mixed (default: as `captioner extract`: 16-mixed on CUDA, "
                        "32-true on CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per CNN batch (default: 8; CUDA: 32; smoke: 2)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers decoding video (default: 2; CUDA: min(12, CPU cores - 2))")
    p.add_argument("--num-clips", type=int, default=None,
                   help="clips to extract (default: 96; CUDA: 1600; smoke: 6)")
    p.add_argument("--cudnn-benchmark", default="on", choices=("on", "off", "both"),
                   help="GPU: cuDNN autotune as `captioner extract` runs (on), off, or both timed in one run")
    p.add_argument("--num-frames", type=int, default=8, help="frames sampled per clip")
    p.add_argument("--cnn-precision", nargs="+", default=None, choices=("auto", "32", "bf16"),
                   help="the feature spec's CNN precision(s), side by side (default on CPU: 32 and, where the CPU "
                        "has it natively, bf16)")
    p.add_argument("--backbone", default=None,
                   help="CNN, with its ImageNet weights (default: the main job's, mobilenet_v2; smoke: random resnet18)")
    p.add_argument("--image-size", type=int, default=None, help="CNN input size (default: the weights' own)")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--seconds", type=float, default=3.0, help="clip length")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch (0: PyTorch's choice)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the script runs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_lightning()
    rows = run(smoke=args.smoke, threads=args.threads or None, device=args.device, num_clips=args.num_clips,
               batch_size=args.batch_size, workers=args.workers, precision=args.precision, backbone=args.backbone,
               image_size=args.image_size, num_frames=args.num_frames, width=args.width, height=args.height,
               seconds=args.seconds, fps=args.fps, cudnn_benchmark=args.cudnn_benchmark,
               cnn_precisions=tuple(args.cnn_precision) if args.cnn_precision else None)
    print(f"machine: {machine_line(args.device)}\n")
    print(format_table(rows, title="Feature extraction throughput"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
