"""Benchmark ONNX Runtime against PyTorch: caption latency on the CPU, one clip and a batch, measured side by side.

    python benchmarks/onnx_latency.py                  # the main job's newest checkpoint, else a random model
    python benchmarks/onnx_latency.py --checkpoint runs/msvd --threads 4
    python benchmarks/onnx_latency.py --smoke          # tiny sizes: checks the script runs, not the speed

Both runtimes caption the same frames (random uint8 clips, already decoded: the networks and the search are timed,
not video decoding) with the checkpoint's generation settings; the timings alternate between them (PyTorch, then
ONNX Runtime, repeat) so a busy machine slows both alike. Without a checkpoint the model is a random one of the
default sizes (efficientnet_lite0, 8 frames, hidden 512, 3,000 words): the speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row, format_table, machine_line, newest_checkpoint, timed  # noqa: E402


def random_model(smoke: bool):
    """A model of the default sizes (smaller with `smoke`), random decoder weights, the offline backbone."""
    import torch

    from captioner.config import CaptionerConfig, FeatureSpec
    from captioner.models.captioner import CaptionModel
    from captioner.vocab import SPECIALS, Vocabulary

    torch.manual_seed(0)
    words = 200 if smoke else 3000
    spec = FeatureSpec(backbone="resnet18", weights=None, num_frames=2, image_size=64) if smoke else FeatureSpec()
    feature_dim = 512 if smoke else 1280
    arch = CaptionerConfig(feature_dim=feature_dim, hidden_dim=64 if smoke else 512, embed_dim=32 if smoke else 256)
    return CaptionModel.from_config(arch, Vocabulary(list(SPECIALS) + [f"w{i}" for i in range(words)]), spec).eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a checkpoint or run folder (default: the main job's newest, else random)")
    p.add_argument("--batch", type=int, default=4, help="clips in the batch measurement (default: 4)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per runtime and size (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for both runtimes (default: 1)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    args = p.parse_args(argv)
    import torch

    from captioner.export import save_folder
    from captioner.onnx_runtime import OnnxCaptioner

    torch.set_num_threads(args.threads)
    source = args.checkpoint or (None if args.smoke else newest_checkpoint())
    if source is not None:
        from captioner.api import VideoCaptioner

        model, what = VideoCaptioner.from_checkpoint(source), str(source)
    else:
        what = "a random model of the default sizes" + (" (smoke)" if args.smoke else "")
        model = random_model(args.smoke)
    batch, repeats = (2, 1) if args.smoke else (args.batch, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        save_folder(model, Path(tmp) / "exported", include_backbone=False, onnx=True)
        onnx_model = OnnxCaptioner(Path(tmp) / "exported", threads=args.threads)
        side = model.encoder.preprocessing.resize_size
        rng = np.random.default_rng(0)
        clips = [torch.from_numpy(rng.integers(0, 256, (model.spec.num_frames, side, side, 3), dtype=np.uint8))
                 for _ in range(batch)]
        rows, captions = [], {}
        for label, chosen in (("one clip", clips[:1]), (f"batch of {batch}", clips)):
            times: dict[str, list[float]] = {"torch": [], "onnx": []}
            for runtime, m in (("torch", model), ("onnx", onnx_model)):  # warm-up: sessions, allocators, caches
                captions[runtime] = m.caption_frames(chosen)
            for _ in range(repeats):  # alternating: a busy machine slows both alike
                times["torch"] += timed(lambda: model.caption_frames(chosen))
                times["onnx"] += timed(lambda: onnx_model.caption_frames(chosen))
            t, o = statistics.median(times["torch"]), statistics.median(times["onnx"])
            same = sum(a == b for a, b in zip(captions["torch"], captions["onnx"]))
            rows.append(Row(f"caption {label}, PyTorch", f"{t * 1000:.0f} ms", "", f"median of {repeats}"))
            rows.append(Row(f"caption {label}, ONNX Runtime", f"{o * 1000:.0f} ms", f"{t / o:.2f}x PyTorch's speed",
                            f"same captions: {same}/{len(chosen)}"))
    print(format_table(rows, f"ONNX Runtime vs PyTorch, CPU ({what}; {args.threads} thread(s), beam "
                             f"{model.generation.beam_size}, {model.spec.num_frames} frames of "
                             f"{model.encoder.preprocessing.crop_size} px)"))
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
