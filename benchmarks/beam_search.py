"""Benchmark beam search batched over many videos against the same search run one video at a time.

    python benchmarks/beam_search.py                  # newest runs/synthetic checkpoint, 64 videos, beam 5
    python benchmarks/beam_search.py --checkpoint my.ckpt --videos 256 --device cuda
    python benchmarks/beam_search.py --smoke          # a tiny untrained decoder: checks the script runs

Both searches must give the same captions; the batched one should be at least 10x faster at 64 videos.
The video features are the checkpoint's cached features (`data/features/**/<spec>/`, or `--features-dir`) when
present, else random.

A third figure is the bound: the matrix products the batched search cannot avoid (per step and layer `h W_hh^T`
and the output layer, at the rows that step carried) timed alone. It says how much of the batched time is
arithmetic, and how far batching can go on this machine (one at a time / bound).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, RUNS_GLOB, Row, format_table, machine_line, median, newest_checkpoint, set_threads, timed,
                    verdict)


def tiny_captioner(seed: int = 0):
    """An untrained captioner with a small vocabulary (for --smoke and when no checkpoint exists)."""
    import torch

    from captioner.config import FeatureSpec
    from captioner.models.captioner import CaptionModel
    from captioner.models.decoder import CaptionDecoder
    from captioner.vocab import Vocabulary

    torch.manual_seed(seed)
    vocab = Vocabulary.build(["a red circle moves left", "a blue square moves right", "a green star grows"])
    decoder = CaptionDecoder(len(vocab), 64, embed_dim=32, hidden_dim=64, pad_id=vocab.pad_id,
                             bos_id=vocab.bos_id, eos_id=vocab.eos_id)
    return CaptionModel(vocab, decoder, FeatureSpec(backbone="resnet18", weights=None, num_frames=4)).eval()


def video_features(model, count: int, features_root: Path, seed: int = 0):
    """`(count, T, D)` features: cached ones of real clips for this spec when there are enough, else random."""
    import numpy as np
    import torch

    folders = sorted(features_root.glob(f"**/{model.spec.key}")) if features_root.is_dir() else []
    folder = folders[0] if folders else features_root / model.spec.key
    files = sorted(folder.glob("*.npy"))[:count]
    dim = model.pool.feature_dim
    if len(files) == count:
        feats = torch.from_numpy(np.stack([np.load(f) for f in files]).astype(np.float32))
        if feats.shape[-1] == dim:
            return feats, f"cached features of {count} clips ({folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder})"
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(count, model.spec.num_frames, dim, generator=gen), "random features"


def rows_per_step(decoder, search) -> list[int]:
    """Run `search()` once and return the number of rows (hypotheses) each generation step carried."""
    rows, step = [], decoder._step

    def counting(ctx, table, tokens, state):
        rows.append(len(tokens))
        return step(ctx, table, tokens, state)

    decoder._step = counting
    try:
        search()
    finally:
        del decoder._step  # back to the class's method
    return rows


def matmul_bound(decoder, rows: list[int], repeats: int, sync) -> float:
    """Seconds of the matrix products of a search that carried `rows` per step: each layer's `h W_hh^T` (plus
    `W_ih h` below the top layer's successors) and the output layer, on random states of those sizes."""
    import torch

    lstm, out, hid = decoder.lstm, decoder.out, decoder.hidden_dim
    dev = out.weight.device
    states = {n: torch.randn(n, hid, device=dev) for n in set(rows)}
    gates = {n: torch.empty(n, 4 * hid, device=dev) for n in set(rows)}

    def products():
        with torch.no_grad():
            for n in rows:
                for layer in range(decoder.num_layers):
                    if layer > 0:
                        torch.mm(states[n], getattr(lstm, f"weight_ih_l{layer}").t(), out=gates[n])
                    gates[n].addmm_(states[n], getattr(lstm, f"weight_hh_l{layer}").t())
                out(states[n])
        sync()

    return median(timed(products, repeats, warmup=1))


def side_by_side(first, second, repeats: int) -> tuple[float, float]:
    """Median seconds of `first()` and of `second()`, timed in turns (after one untimed call of `first`), so that
    both see the same load on a shared machine: their ratio is what the benchmark reports."""
    firsts, seconds = [], []
    first()
    for _ in range(repeats):
        firsts += timed(first)
        seconds += timed(second)
    return median(firsts), median(seconds)


def run(smoke: bool = False, threads: int | None = 1, device: str = "cpu", checkpoint: Path | None = None,
        videos: int = 64, beam_size: int = 5, max_len: int | None = None, repeats: int = 3,
        features_dir: Path | None = None) -> list[Row]:
    import torch

    from captioner import VideoCaptioner

    set_threads(threads)
    device = torch.device(device)
    if smoke:
        model, source = tiny_captioner(), "tiny untrained decoder"
        videos, repeats = min(videos, 6), 1
    else:
        checkpoint = checkpoint or newest_checkpoint()
        if checkpoint is not None:
            checkpoint = Path(checkpoint).resolve()
            source = str(checkpoint.relative_to(REPO) if checkpoint.is_relative_to(REPO) else checkpoint)
            model = VideoCaptioner.from_checkpoint(checkpoint)
        else:
            model, source = tiny_captioner(), "tiny untrained decoder (no checkpoint found: run scripts/train.py)"
    model = model.to(device).eval()
    feats, feats_source = video_features(model, videos, Path(features_dir or REPO / "data" / "features"))
    feats = feats.to(device)
    settings = model.generation.merged(beam_size=beam_size, max_len=max_len)  # the checkpoint's, where not given
    kwargs = dict(beam_size=settings.beam_size, max_len=settings.max_len, length_penalty=settings.length_penalty,
                  no_repeat_ngram=settings.no_repeat_ngram)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def batched(**over):
        with torch.no_grad():
            out = model.generate(feats, **{**kwargs, **over}).ids
        sync()
        return out

    def one_by_one(**over):
        with torch.no_grad():
            out = [model.generate(feats[i : i + 1], **{**kwargs, **over}).ids[0] for i in range(len(feats))]
        sync()
        return out

    captions_batched = [model.vocab.decode(row) for row in batched()]
    captions_single = [model.vocab.decode(row) for row in one_by_one()]
    same = sum(a == b for a, b in zip(captions_batched, captions_single))
    t_batched, t_single = side_by_side(batched, one_by_one, repeats)
    speedup = t_single / t_batched
    # the same searches without repeat blocking, timed in the same run: what blocking costs each, and the ratio
    t_batched_off, t_single_off = side_by_side(lambda: batched(no_repeat_ngram=0),
                                               lambda: one_by_one(no_repeat_ngram=0), repeats)
    speedup_off = t_single_off / t_batched_off
    steps = rows_per_step(model.decoder, batched)
    t_bound = matmul_bound(model.decoder, steps, max(repeats, 3), sync)
    notes = (f"beam {beam_size}, max length {kwargs['max_len']}, no_repeat_ngram {kwargs['no_repeat_ngram']}; {source}; "
             f"{feats_source}; median of {repeats}, batched and one at a time timed in turns")
    return [
        Row(f"beam search, {videos} videos batched", f"{videos / t_batched:.0f} videos/s",
            f"{speedup:.1f}x one video at a time (target >= 10x): {verdict(speedup, 10)}",
            f"{t_batched * 1000:.1f} ms; {notes}"),
        Row(f"beam search, {videos} videos one at a time", f"{videos / t_single:.0f} videos/s", "baseline",
            f"{t_single * 1000:.1f} ms"),
        Row("beam search without repeat blocking (no_repeat_ngram 0)", f"{videos / t_batched_off:.0f} videos/s",
            f"{speedup_off:.1f}x one at a time; with blocking {speedup:.1f}x = {speedup / speedup_off - 1:+.0%} "
            f"(target within 10%): {'PASS' if abs(speedup / speedup_off - 1) <= 0.10 else 'MISS'}",
            f"blocking costs {t_batched / t_batched_off - 1:+.0%} batched, {t_single / t_single_off - 1:+.0%} one at a "
            f"time ({t_batched_off * 1000:.1f} / {t_single_off * 1000:.1f} ms without it)"),
        Row("beam search, same captions batched vs one at a time", f"{same}/{videos}",
            "PASS" if same == videos else "MISS", ""),
        Row("beam search bound: its matrix products alone", f"{videos / t_bound:.0f} videos/s",
            f"{t_bound / t_batched:.0%} of the batched time; one at a time / bound = {t_single / t_bound:.1f}x",
            f"{t_bound * 1000:.1f} ms; {len(steps)} steps, {sum(steps)} rows in all (the batched search's)"),
    ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None, help=f"checkpoint (default: the newest {RUNS_GLOB})")
    p.add_argument("--features-dir", type=Path, default=None,
                   help="root of cached features, searched for <root>/**/<the checkpoint's spec>/*.npy "
                        "(default: data/features of the repo; random features when there are too few)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--videos", type=int, default=64, help="videos searched")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--max-len", type=int, default=None, help="maximum caption length (default: the checkpoint's)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch (0: PyTorch's choice)")
    p.add_argument("--smoke", action="store_true", help="tiny untrained decoder, few videos: checks the script runs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = run(args.smoke, args.threads or None, args.device, args.checkpoint, args.videos, args.beam_size,
               args.max_len, args.repeats, args.features_dir)
    print(f"machine: {machine_line(args.device)}\n")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
