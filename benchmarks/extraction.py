"""Benchmark feature extraction: frames/s end to end (decode + preprocess + CNN) against the CNN alone in memory.

    python benchmarks/extraction.py                                   # CPU, EfficientNet-Lite0, 48 clips
    python benchmarks/extraction.py --device cuda --workers 8 --batch-size 32 --num-clips 400
    python benchmarks/extraction.py --smoke                           # tiny sizes: checks the script runs

H.264 clips (PyAV, 320x240, 3 s at 25 fps by default: moving shapes, as the synthetic dataset) are written to a
temporary folder. End to end is `captioner.extract.run_extraction`, what `captioner extract` runs: Lightning's
predict loop, `CroppedClips` decoding and cropping in DataLoader workers, `FeatureExtractor` (channels-last, the
precision `captioner extract` picks) and the writer of the feature cache. The bound is the same CNN on
normalised frames already in memory (on the device), at the same batch size and precision. A third row times
decoding and cropping alone (the same DataLoader, no CNN). Throughputs are steady state: the first batch,
which starts the workers and warms the CNN up, is left out.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

try:
    from common import Row, format_table, machine_line, median, quiet_lightning, set_threads, verdict
except ImportError:  # imported as benchmarks.extraction
    from benchmarks.common import Row, format_table, machine_line, median, quiet_lightning, set_threads, verdict

GPU_TARGET = 0.80  # end to end, as a share of the CNN alone, on a GPU
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


class BatchTimer:
    """A callback timing the predict loop from the end of its first batch to its end (the last writes included).

    The GPU is synchronised only at those two points, so that batches still overlap as they do untimed.
    """

    def __init__(self, device: str):
        import pytorch_lightning as pl

        timer = self

        class _Callback(pl.Callback):
            def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
                if timer.start is None:
                    _sync(device)
                    timer.start = time.perf_counter()
                else:
                    timer.clips += len(batch["ids"])

            def on_predict_end(self, trainer, pl_module):  # runs after the FeatureWriter's (listed first)
                _sync(device)
                timer.end = time.perf_counter()

        self.start: float | None = None
        self.end: float | None = None
        self.clips = 0
        self.callback = _Callback()

    def clips_per_second(self) -> float:
        """Steady state: the clips of batches 2..N over the time from the end of batch 1 to the end."""
        return self.clips / (self.end - self.start)


def end_to_end(paths: list[Path], spec, cache_root: Path, device: str, precision: str, batch_size: int,
               workers: int) -> tuple[float, float]:
    """(steady clips/s, whole-call seconds) of `run_extraction` over `paths` into an empty cache."""
    from captioner.data.features import FeatureCache
    from captioner.extract import run_extraction

    cache = FeatureCache(cache_root, spec)
    items = [(p.stem, str(p)) for p in paths]
    timer = BatchTimer(device)
    start = time.perf_counter()
    failures = run_extraction(spec, items, cache, accelerator="gpu" if device == "cuda" else "cpu",
                              precision=precision, batch_size=batch_size, num_workers=workers, progress=False,
                              callbacks=[timer.callback])
    whole = time.perf_counter() - start
    if failures or not all(cache.has(vid) for vid, _ in items):
        raise RuntimeError(f"extraction failed: {failures[:3] if failures else 'clips missing from the cache'}")
    return timer.clips_per_second(), whole


def decode_only(paths: list[Path], spec, preprocessing, batch_size: int, workers: int) -> float:
    """Steady clips/s of the extraction DataLoader alone: decode, resize, crop, collate in `workers` workers."""
    from torch.utils.data import DataLoader

    from captioner.extract import CroppedClips, collate_cropped

    loader = DataLoader(CroppedClips([(p.stem, str(p)) for p in paths], spec.num_frames, preprocessing),
                        batch_size=batch_size, num_workers=workers, collate_fn=collate_cropped)
    marks = []
    for batch in loader:
        marks.append((time.perf_counter(), len(batch["ids"])))
    (start, _), *rest = marks
    return sum(n for _, n in rest) / (rest[-1][0] - start)


def cnn_alone(paths: list[Path], model, device: str, precision: str, batch_size: int, batches: int) -> float:
    """Clips/s of the extraction CNN (channels-last, autocast as the precision says) on normalised frames in memory."""
    import torch

    from captioner.extract import CroppedClips

    spec = model.spec
    model = model.to(device).eval()
    clips = CroppedClips([(p.stem, str(p)) for p in paths[:batch_size]], spec.num_frames, model.preprocessing)
    frames = torch.stack([clips[i][1] for i in range(len(clips))])  # (B, T, 3, S, S) uint8
    frames = frames.repeat(-(-batch_size // len(frames)), 1, 1, 1, 1)[:batch_size].to(device)
    x = frames.float().div_(255.0).sub_(model.mean).div_(model.std)  # FeatureExtractor.forward's normalisation
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    autocast = torch.autocast(torch.device(device).type, dtype=dtype, enabled="mixed" in precision)
    with torch.inference_mode(), autocast:
        model.encoder(x)  # warm-up (cuDNN picks its kernels)
        _sync(device)
        marks = [time.perf_counter()]
        for _ in range(batches):
            model.encoder(x)
            _sync(device)
            marks.append(time.perf_counter())
    return batch_size / median([b - a for a, b in zip(marks, marks[1:])])


def run(smoke: bool = False, threads: int | None = 1, device: str = "cpu", num_clips: int | None = None,
        batch_size: int | None = None, workers: int = 2, precision: str | None = None, backbone: str | None = None,
        image_size: int | None = None, num_frames: int = 8, width: int = 320, height: int = 240,
        seconds: float = 3.0, fps: int = 25) -> list[Row]:
    """Extract features of generated clips end to end, then time the CNN alone and decoding alone."""
    import pytorch_lightning as pl
    import torch

    from captioner.data.features import FeatureSpec
    from captioner.extract import FeatureExtractor, resolve_precision

    set_threads(threads)
    if smoke:
        num_clips, batch_size, width, height, seconds, fps = num_clips or 6, batch_size or 2, 64, 48, 1.0, 8
        spec = FeatureSpec(backbone=backbone or "resnet18", weights=None, num_frames=2, image_size=image_size or 32)
    else:
        num_clips, batch_size = num_clips or 48, batch_size or 8
        spec = FeatureSpec(backbone=backbone or "efficientnet_lite0", num_frames=num_frames, image_size=image_size)
    precision = resolve_precision(precision or "auto", "gpu" if device == "cuda" else "cpu")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # as run_extraction's Trainer(benchmark=True)
    pl.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory(prefix="extraction-bench-") as tmp:
        tmp = Path(tmp)
        paths = write_clips(tmp / "clips", num_clips, width, height, seconds, fps)
        e2e, whole = end_to_end(paths, spec, tmp / "features", device, precision, batch_size, workers)
        model = FeatureExtractor(spec, channels_last=True)
        decoded = decode_only(paths, spec, model.preprocessing, batch_size, workers)
        bound = cnn_alone(paths, model, device, precision, batch_size, batches=max(3, num_clips // batch_size - 1))
    t = spec.num_frames
    ratio = e2e / bound
    target = (f"target >= {GPU_TARGET:.0%}: {verdict(ratio, GPU_TARGET)}" if device == "cuda"
              else "on CPU: reported, no target")
    where = f"{device}, {precision}, batch {batch_size} clips x {t} frames"
    clip_desc = f"{num_clips} clips {width}x{height}, {seconds:g} s @ {fps} fps"
    return [
        Row(f"extraction end to end ({where}, {workers} workers)", f"{e2e * t:.1f} frames/s",
            f"{ratio:.0%} of the CNN alone ({target})",
            f"{spec.key}; {clip_desc}; whole run incl. start-up {whole:.1f} s"),
        Row(f"extraction bound: CNN alone ({where})", f"{bound * t:.1f} frames/s", "",
            "normalised frames in memory, channels-last; median batch"),
        Row(f"extraction: decode + crop alone ({workers} workers)", f"{decoded * t:.1f} frames/s",
            f"{decoded / bound:.2f}x the CNN's rate", "the extraction DataLoader without the CNN (decord)"),
    ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--precision", default=None,
                   help="Lightning precision, e.g. bf16-mixed (default: as `captioner extract`: 16-mixed on CUDA, "
                        "32-true on CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per CNN batch (default: 8; smoke: 2)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding video")
    p.add_argument("--num-clips", type=int, default=None, help="clips to extract (default: 48; smoke: 6)")
    p.add_argument("--num-frames", type=int, default=8, help="frames sampled per clip")
    p.add_argument("--backbone", default=None, help="CNN (default: efficientnet_lite0; smoke: random resnet18)")
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
               seconds=args.seconds, fps=args.fps)
    print(f"machine: {machine_line(args.device)}\n")
    print(format_table(rows, title="Feature extraction throughput"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
