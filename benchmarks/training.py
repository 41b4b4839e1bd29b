"""Benchmark decoder training on cached features: clips/s and tokens/s, and the share of step time outside the model.

    python benchmarks/training.py                                   # CPU, batch 64 and 256
    python benchmarks/training.py --device cuda --precision bf16-mixed --steps 200
    python benchmarks/training.py --smoke                           # tiny sizes: checks the script runs

A feature cache of random features (`--feature-dim`, `--num-frames`) and random captions (`--vocab-size` words,
`--min-words`..`--max-words` long, `--captions-per-clip` per clip) is written into a temporary folder, in the
layout `captioner extract` writes. Training then runs through the real path: `CaptioningDataModule` +
`CaptioningSystem` + a Lightning `Trainer` (gradient clipping, CSV and TensorBoard loggers as `captioner train`
sets them up). The bound is the same system's forward + backward + clipping + optimizer step on batches already in
memory (on the device), with no DataLoader, no Trainer: the Trainer's autocast, optimizer class and settings,
no per-step host sync, every caption length warmed up first. "Outside the model" = 1 - bound / Trainer time per
step; below -15 % the verdict is INVALID (the bound is slower than what it bounds), never PASS.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

try:
    from common import Row, format_table, machine_line, median, quiet_lightning, set_threads, share_outside, verdict
except ImportError:  # imported as benchmarks.training
    from benchmarks.common import (Row, format_table, machine_line, median, quiet_lightning, set_threads, share_outside,
                                   verdict)

OUTSIDE_TARGET = 0.10  # at most this share of a training step outside forward + backward + optimizer step


def write_feature_set(root: Path, num_clips: int, captions_per_clip: int, num_frames: int, feature_dim: int,
                      vocab_size: int, min_words: int, max_words: int, seed: int = 0) -> Path:
    """`root/data/annotations.json` and its features cached under `root/features`, as the DataModule expects.

    The clips' video files are not written: with every clip's features cached, the DataModule never opens them.
    """
    import numpy as np
    import torch

    from captioner.config import FeatureSpec
    from captioner.features.cache import FeatureCache

    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab_size)]
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    videos = []
    for i in range(num_clips):
        lengths = rng.integers(min_words, max_words + 1, size=captions_per_clip)
        captions = [" ".join(words[j] for j in rng.integers(0, vocab_size, size=n)) for n in lengths]
        videos.append({"id": f"clip{i:05d}", "path": f"videos/clip{i:05d}.mp4", "split": "train",
                       "captions": captions})
    (data_dir / "annotations.json").write_text(json.dumps({"videos": videos}))
    cache = FeatureCache(root / "features" / data_dir.name, FeatureSpec(num_frames=num_frames))
    feats = torch.from_numpy(rng.standard_normal((num_clips, num_frames, feature_dim), dtype=np.float32))
    for v, f in zip(videos, feats):
        cache.save(v["id"], f)
    return data_dir


class StepTimer:
    """A callback noting the wall time at the end of every training step.

    On CPU the figure is the median step (robust to a busy machine); on a GPU, where steps are queued
    asynchronously, it is the mean over the timed steps, synchronising only at their two ends.
    """

    def __init__(self, warmup: int):
        import pytorch_lightning as pl

        timer = self

        class _Callback(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                timer.step += 1
                if timer.step >= timer.warmup:
                    if timer.step in (timer.warmup, trainer.max_steps):
                        _sync(pl_module.device)
                    timer.marks.append(time.perf_counter())

        self.warmup, self.step, self.marks = warmup, 0, []
        self.callback = _Callback()

    def seconds_per_step(self, device: str) -> float:
        return _per_step(self.marks, device)


def _per_step(marks: list[float], device: str) -> float:
    """Seconds per step from the times at the ends of steps (the first mark ends the warm-up)."""
    if device == "cuda":
        return (marks[-1] - marks[0]) / (len(marks) - 1)
    return median([b - a for a, b in zip(marks, marks[1:])])


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _trainer_kwargs(device: str, precision: str) -> dict:
    return dict(accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision,
                gradient_clip_val=1.0, gradient_clip_algorithm="norm",  # as configs/*.yaml
                limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False)


def trainer_seconds_per_step(data_args: dict, model_args: dict, steps: int, warmup: int, device: str,
                             precision: str, root: Path, profile: bool = False):
    """Train `warmup + steps` steps with the Trainer; return seconds per timed step, the system and the data."""
    import pytorch_lightning as pl

    from captioner.cli.train import default_loggers
    from captioner.data.datamodule import CaptioningDataModule
    from captioner.systems.captioning import CaptioningSystem

    pl.seed_everything(0, verbose=False)
    data = CaptioningDataModule(**data_args)
    system = CaptioningSystem(**model_args)
    timer = StepTimer(warmup)
    trainer = pl.Trainer(max_steps=warmup + steps, default_root_dir=str(root), logger=default_loggers(str(root)),
                         callbacks=[timer.callback], profiler="simple" if profile else None,
                         **_trainer_kwargs(device, precision))
    trainer.fit(system, datamodule=data)
    if profile:
        print(trainer.profiler.summary())
    return timer.seconds_per_step(device), system, data


def reference_optimizer(trainer_optimizer, params):
    """A new optimizer of the Trainer's optimizer's class and settings (foreach / fused / capturable included) over
    `params`: the reference must step the way the Trainer steps, whatever `configure_optimizers` chooses."""
    import inspect

    accepted = inspect.signature(type(trainer_optimizer)).parameters
    return type(trainer_optimizer)(params, **{k: v for k, v in trainer_optimizer.defaults.items() if k in accepted})


def warmup_batches(batches: list[dict], warmup: int) -> list[dict]:
    """The first `warmup` batches, then one batch of every caption length (padded width) the timed batches have
    that those did not: every shape's kernels (cuDNN plans, allocator blocks) are made before timing starts."""
    chosen = list(batches[:warmup])
    seen = {tuple(b["captions"].shape) for b in chosen}
    for b in batches[warmup:]:
        if tuple(b["captions"].shape) not in seen:
            seen.add(tuple(b["captions"].shape))
            chosen.append(b)
    return chosen


def model_seconds_per_step(system, batches: list[dict], warmup: int, device: str, precision: str,
                           trainer=None) -> float:
    """Forward + backward + clipping + optimizer and scheduler step of a fresh copy of `system` on `batches`
    already on `device`: the work of a Trainer step without its data loading, hooks and logging.

    It must do what the Trainer does, no more: the autocast of the Trainer's own precision plugin, an optimizer of
    the Trainer's optimizer's class and settings, no host synchronisation per step (no `.item()`, no clock reading
    that waits for the GPU), and an untimed warm-up over every caption length the timed batches have.
    Per step: the median on CPU, the mean over the timed steps on a GPU (synchronised at both ends only).
    """
    import contextlib

    import pytorch_lightning as pl
    import torch

    from captioner.systems.captioning import CaptioningSystem

    pl.seed_everything(0, verbose=False)
    model = CaptioningSystem(**system.hparams).to(device).train()
    if trainer is not None:
        opt = reference_optimizer(trainer.optimizers[0], model.parameters())
        forward_context = trainer.precision_plugin.forward_context
    else:  # configure_optimizers' AdamW, and the autocast Lightning's plugin enters
        opt = torch.optim.AdamW(model.parameters(), lr=model.hparams.lr, weight_decay=model.hparams.weight_decay)
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        forward_context = (lambda: torch.autocast(torch.device(device).type, dtype=dtype, cache_enabled=False)) \
            if "mixed" in precision else contextlib.nullcontext
    warm, timed = warmup_batches(batches, warmup), batches[warmup:]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=model.hparams.lr, total_steps=len(warm) + len(timed) + 1)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=precision.startswith("16"))

    def step(batch):
        with forward_context():
            loss = model.loss(batch)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)

    return time_steps(step, warm, timed, asynchronous=device == "cuda", sync=lambda: _sync(device))


def time_steps(step, warm: list, timed: list, asynchronous: bool, sync) -> float:
    """Seconds per step of `step(batch)` over `timed` after `warm`: on a device that runs asynchronously, the
    mean between two synchronisations (reading the clock per step would time the launches, not the work);
    else the median step."""
    for batch in warm:
        step(batch)
    sync()
    marks = [time.perf_counter()]
    for batch in timed:
        step(batch)
        if not asynchronous:
            marks.append(time.perf_counter())
    sync()
    if asynchronous:
        return (time.perf_counter() - marks[0]) / len(timed)
    return median([b - a for a, b in zip(marks, marks[1:])])


def measure_batch_size(data_dir: Path, features_dir: Path, num_frames: int, batch_size: int, steps: int,
                       warmup: int, device: str, precision: str, num_workers: int | None, log_root: Path,
                       model_args: dict, baseline: bool = True, profile: bool = False) -> dict:
    """Seconds per step in the Trainer (features in memory, and with `baseline` also read per item), and for
    the model alone on batches in memory; caption pairs and target tokens per batch."""
    data_args = dict(data_dir=str(data_dir), synthetic=False, features_dir=str(features_dir),
                     features=dict(num_frames=num_frames), batch_size=batch_size)
    if num_workers is not None:
        data_args["num_workers"] = num_workers
    result = {}
    if baseline:  # the previous data path: one .npy read per caption pair, collated item by item
        result["per_item_s"], _, _ = trainer_seconds_per_step({**data_args, "features_in_memory": False}, model_args,
                                                              steps, warmup, device, precision,
                                                              log_root / f"b{batch_size}-per-item")
    result["trainer_s"], system, data = trainer_seconds_per_step(data_args, model_args, steps, warmup, device,
                                                                 precision, log_root / f"b{batch_size}", profile)
    batches = []
    for batch in data.train_dataloader():
        batches.append({k: v.to(device) for k, v in batch.items()})
        if len(batches) == warmup + steps:
            break
    result["model_s"] = model_seconds_per_step(system, batches, warmup, device, precision, trainer=system.trainer)
    result["tokens"] = sum(int((b["captions"][:, 1:] != 0).sum()) for b in batches) / len(batches)
    result["items"] = sum(len(b["captions"]) for b in batches) / len(batches)
    return result


def run(smoke: bool = False, threads: int | None = 1, device: str = "cpu", batch_sizes: tuple[int, ...] = (64, 256),
        steps: int | None = None, warmup: int = 3, precision: str | None = None, num_workers: int | None = None,
        num_clips: int | None = None, repeats: int = 3, baseline: bool = True, profile: bool = False) -> list[Row]:
    """Train at each batch size through the Trainer and on in-memory batches; one row per figure."""
    set_threads(threads)
    precision = precision or ("bf16-mixed" if device == "cuda" else "32-true")
    if smoke:
        batch_sizes, warmup, repeats = tuple(max(b // 8, 2) for b in batch_sizes), 1, 1
        steps = steps or 3
        sizes = dict(num_clips=num_clips or 40, captions_per_clip=2, num_frames=4, feature_dim=32, vocab_size=50,
                     min_words=3, max_words=8)
        model_args = dict(embed_dim=16, hidden_dim=32, beam_size=1)
    else:
        sizes = dict(num_clips=num_clips or 2000, captions_per_clip=5, num_frames=8, feature_dim=1280,
                     vocab_size=2000, min_words=5, max_words=15)
        model_args = dict(embed_dim=256, hidden_dim=512, dropout=0.3, lr=2e-3)  # configs/synthetic.yaml
    steps = steps or 20
    needed = max(batch_sizes) * (warmup + steps)
    if sizes["num_clips"] * sizes["captions_per_clip"] < needed:  # the timed steps stay inside one epoch
        sizes["num_clips"] = -(-needed // sizes["captions_per_clip"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="training-bench-") as tmp:
        tmp = Path(tmp)
        data_dir = write_feature_set(tmp, **sizes)
        for b in batch_sizes:
            results = [measure_batch_size(data_dir, tmp / "features", sizes["num_frames"], b, steps, warmup, device,
                                          precision, num_workers, tmp / "logs", model_args, baseline, profile)
                       for _ in range(repeats)]
            trainer_s, model_s = median([r["trainer_s"] for r in results]), median([r["model_s"] for r in results])
            tokens, items = results[0]["tokens"], results[0]["items"]
            outside, invalid = share_outside(model_s, trainer_s)
            where = f"{device}, {precision}"
            timing = f"{'median step' if device == 'cpu' else 'mean step'} of {steps}, median of {len(results)} runs"
            rows += [
                Row(f"training, batch {b}, Trainer ({where})", f"{items / trainer_s:.1f} clips/s",
                    f"{tokens / trainer_s:.0f} tokens/s", f"{trainer_s * 1e3:.1f} ms/step ({timing})"),
                Row(f"training, batch {b}, model alone ({where})", f"{items / model_s:.1f} clips/s",
                    f"{tokens / model_s:.0f} tokens/s",
                    f"{model_s * 1e3:.1f} ms/step: forward + backward + clip + the Trainer's optimizer, "
                    "batches in memory"),
                Row(f"training, batch {b}, share of step outside the model", f"{outside:.1%}",
                    f"target <= {OUTSIDE_TARGET:.0%}: "
                    + verdict(outside, OUTSIDE_TARGET, higher_is_better=False, invalid=invalid)
                    + (" (below 0: within the run-to-run noise)" if outside < 0 and not invalid else ""),
                    f"1 - model alone / Trainer step: {(trainer_s - model_s) * 1e3:.1f} ms/step of data loading, "
                    "collate, Lightning"),
            ]
            if baseline:
                per_item_s = median([r["per_item_s"] for r in results])
                rows.append(Row(f"training, batch {b}, before: features read per item", f"{items / per_item_s:.1f} clips/s",
                                f"{1 - model_s / per_item_s:.1%} outside the model",
                                f"{per_item_s * 1e3:.1f} ms/step; features_in_memory=false (one .npy per pair)"))
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--precision", default=None,
                   help="Lightning precision (default: 32-true on CPU, bf16-mixed on CUDA)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[64, 256], help="batch sizes to measure")
    p.add_argument("--steps", type=int, default=None, help="timed steps per batch size (default: 20; smoke: 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs per batch size, the median reported (a single run on a shared machine can even "
                        "show the Trainer faster than the model alone)")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the DataModule's)")
    p.add_argument("--num-clips", type=int, default=None,
                   help="clips in the feature cache, 5 captions each (default: 2000, more if the steps need it)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch (0: PyTorch's choice)")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the Trainer run that reads the features per item (features_in_memory=false)")
    p.add_argument("--profile", action="store_true", help="also print Lightning's SimpleProfiler report")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the script runs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_lightning()
    rows = run(smoke=args.smoke, threads=args.threads or None, device=args.device,
               batch_sizes=tuple(args.batch_size), steps=args.steps, warmup=args.warmup, precision=args.precision,
               num_workers=args.num_workers, num_clips=args.num_clips, repeats=args.repeats,
               baseline=not args.no_baseline, profile=args.profile)
    print(f"machine: {machine_line(args.device)}\n")
    print(format_table(rows, title="Training throughput on cached features"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
