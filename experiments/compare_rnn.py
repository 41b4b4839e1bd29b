"""Measured RNN vs GRU vs LSTM comparisons: accuracy vs length on the long-range task, and gradient clipping."""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from pathlib import Path
from statistics import mean
from typing import Optional

import torch
from pytorch_lightning import Callback

from captioner.cli.train import CONFIG_DIR, build_cli

LONG_RANGE_CONFIG = CONFIG_DIR / "sequence" / "long_range.yaml"
EXPLODING_CONFIG = CONFIG_DIR / "sequence" / "exploding.yaml"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


class StepHistory(Callback):
    """Records the per-step training values (loss, gradient norms) that the system logs."""

    KEYS = ("train/loss_step", "train/grad_norm", "train/grad_norm_clipped")

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        row = {"step": trainer.global_step}
        row.update({k: float(metrics[k]) for k in self.KEYS if k in metrics})
        self.rows.append(row)


def train_run(config: Path, overrides: list[str]) -> dict:
    """Train one config through the shared entry point (`captioner.cli.build_cli`), test the best checkpoint.

    Returns:
        Test metrics, plus `steps`, `seconds`, `val_acc` (best) and `history` (per-step rows).
    """
    with warnings.catch_warnings():
        # build_cli is given explicit args while sys.argv holds this command's own options; that is intended.
        warnings.filterwarnings("ignore", message=".*args parameter is intended")
        cli = build_cli(["--config", str(config), *QUIET, *overrides])
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    history = StepHistory()
    trainer.callbacks.append(history)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None else ""
    results = trainer.test(model, datamodule=data, ckpt_path=best or None, verbose=False)
    out = {k: float(v) for k, v in (results[0] if results else {}).items()}
    best_score = ckpt.best_model_score if ckpt is not None else None
    out.update(
        steps=trainer.global_step,
        seconds=seconds,
        val_acc=float(best_score) if best_score is not None else float("nan"),
        history=history.rows,
    )
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def compare_long_range(
    out: Path,
    cells: list[str],
    lengths: list[int],
    seeds: list[int],
    gate_init: str,
    max_epochs: Optional[int],
) -> list[dict]:
    """Train every cell at every length (and seed) on the first-symbol recall task; write table and plot."""
    rows = []
    for seq_len in lengths:
        for cell in cells:
            for seed in seeds:
                root = out / "runs" / f"{cell}_T{seq_len}_seed{seed}"
                overrides = [
                    "--model.init_args.cell", cell,
                    "--model.init_args.gate_init", gate_init,
                    "--data.init_args.seq_len", str(seq_len),
                    "--data.init_args.seed", str(seed),
                    "--seed_everything", str(seed),
                    "--trainer.default_root_dir", str(root),
                ]  # fmt: skip
                if max_epochs is not None:
                    overrides += ["--trainer.max_epochs", str(max_epochs)]
                result = train_run(LONG_RANGE_CONFIG, overrides)
                row = {
                    "cell": cell,
                    "seq_len": seq_len,
                    "seed": seed,
                    "gate_init": gate_init,
                    "test_acc": round(result["test/acc"], 4),
                    "best_val_acc": round(result["val_acc"], 4),
                    "steps": result["steps"],
                    "seconds": round(result["seconds"], 1),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
                _write_csv(out / "long_range.csv", rows)  # keep partial results if interrupted
    (out / "long_range.md").write_text(long_range_table(rows, cells, lengths) + "\n")
    plot_accuracy_vs_length(rows, cells, lengths, out / "long_range.png")
    return rows


def long_range_table(rows: list[dict], cells: list[str], lengths: list[int]) -> str:
    """Markdown table: test accuracy per cell and length (mean, and min-max over seeds), steps and seconds."""
    header = "| cell | " + " | ".join(f"T={t}" for t in lengths) + " | steps (mean) | time (s, total) |"
    lines = [header, "|" + "---|" * (len(lengths) + 3)]
    for cell in cells:
        mine = [r for r in rows if r["cell"] == cell]
        accs = []
        for t in lengths:
            vals = [r["test_acc"] for r in mine if r["seq_len"] == t]
            if len(vals) > 1:
                accs.append(f"{mean(vals):.3f} ({min(vals):.2f}-{max(vals):.2f})")
            else:
                accs.append(f"{vals[0]:.3f}" if vals else "-")
        steps = mean(r["steps"] for r in mine) if mine else 0
        seconds = sum(r["seconds"] for r in mine)
        lines.append(f"| {cell} | " + " | ".join(accs) + f" | {steps:.0f} | {seconds:.0f} |")
    return "\n".join(lines)


def plot_accuracy_vs_length(rows: list[dict], cells: list[str], lengths: list[int], path: Path) -> None:
    """Accuracy vs sequence length, one line per cell, chance level dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = [("o", "-", 8), ("s", "--", 6), ("^", ":", 5)]  # distinct, so lines that coincide stay visible
    for i, cell in enumerate(cells):
        accs = [mean(r["test_acc"] for r in rows if r["cell"] == cell and r["seq_len"] == t) for t in lengths]
        marker, linestyle, size = styles[i % len(styles)]
        (line,) = ax.plot(lengths, accs, marker=marker, linestyle=linestyle, markersize=size, label=cell.upper())
        seeds = [r for r in rows if r["cell"] == cell]
        if len(seeds) > len(lengths):  # several seeds: show each run faintly
            xs, ys = [r["seq_len"] for r in seeds], [r["test_acc"] for r in seeds]
            ax.scatter(xs, ys, color=line.get_color(), alpha=0.3, s=12)
    ax.axhline(0.25, color="gray", linestyle="--", linewidth=1, label="chance (1/4)")
    ax.set_xlabel("sequence length T (steps between the symbol and the answer)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    several_seeds = len(rows) > len(cells) * len(lengths)
    ax.set_title("Recall the first symbol" + (" (mean over seeds)" if several_seeds else ""))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare_clipping(out: Path, clip_values: list[Optional[float]], max_epochs: Optional[int]) -> list[dict]:
    """Train the exploding-gradient config with each clip value; write table, per-step CSV and plot."""
    rows, histories = [], {}
    for clip in clip_values:
        name = "no_clip" if clip is None else f"clip_{clip:g}"
        overrides = [
            "--trainer.gradient_clip_val", "null" if clip is None else str(clip),
            "--trainer.default_root_dir", str(out / "runs" / name),
        ]  # fmt: skip
        if max_epochs is not None:
            overrides += ["--trainer.max_epochs", str(max_epochs)]
        result = train_run(EXPLODING_CONFIG, overrides)
        history = result["history"]
        norms = [h.get("train/grad_norm", math.nan) for h in history]
        losses = [h.get("train/loss_step", math.nan) for h in history]
        applied = [h.get("train/grad_norm_clipped", h.get("train/grad_norm", math.nan)) for h in history]
        finite = [n for n in norms if math.isfinite(n)]
        first_nan = next((h["step"] for h, x in zip(history, losses) if not math.isfinite(x)), None)
        row = {
            "run": name,
            "gradient_clip_val": clip,
            "max_grad_norm": max(finite) if finite else math.nan,
            "median_grad_norm": sorted(finite)[len(finite) // 2] if finite else math.nan,
            "max_applied_norm": max((a for a in applied if math.isfinite(a)), default=math.nan),
            "first_nan_step": first_nan,
            "final_train_loss": losses[-1] if losses else math.nan,
            "test_acc": round(result.get("test/acc", math.nan), 4),
            "steps": result["steps"],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        histories[name] = history
        per_step = [{k: h.get(k) for k in ("step", *StepHistory.KEYS)} for h in history]
        _write_csv(out / f"exploding_{name}_steps.csv", per_step)
    _write_csv(out / "exploding.csv", rows)
    (out / "exploding.md").write_text(clipping_table(rows) + "\n")
    plot_grad_norms(histories, out / "exploding.png")
    return rows


def clipping_table(rows: list[dict]) -> str:
    """Markdown table of the clipping comparison."""
    lines = [
        "| run | max grad norm (before clipping) | median | max norm applied | first NaN loss at step "
        "| final loss | test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        nan_step = "never" if r["first_nan_step"] is None else str(r["first_nan_step"])
        lines.append(
            f"| {r['run']} | {r['max_grad_norm']:.3g} | {r['median_grad_norm']:.3g} | {r['max_applied_norm']:.3g} "
            f"| {nan_step} | {r['final_train_loss']:.3g} | {r['test_acc']:.3f} |"
        )
    return "\n".join(lines)


def plot_grad_norms(histories: dict[str, list[dict]], path: Path) -> None:
    """Gradient norm per step (log scale) for each run; a NaN/inf norm is drawn as a cross at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, history in histories.items():
        steps = [h["step"] for h in history]
        norms = [h.get("train/grad_norm", math.nan) for h in history]
        ax.plot(steps, norms, label=f"{name}: before clipping", linewidth=1)
        if any("train/grad_norm_clipped" in h for h in history):
            ax.plot(steps, [h.get("train/grad_norm_clipped", math.nan) for h in history],
                    label=f"{name}: applied", linewidth=1, linestyle="--")  # fmt: skip
        bad = [s for s, n in zip(steps, norms) if not math.isfinite(n)]
        if bad:
            top = max((n for n in norms if math.isfinite(n)), default=1.0)
            ax.scatter(bad[:1], [top], marker="x", color="red", zorder=3, label=f"{name}: NaN from here")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-3)  # a fitted model's gradients can reach 0, which a log axis cannot show
    ax.set_xlabel("training step")
    ax.set_ylabel("gradient L2 norm")
    ax.set_title("Exploding gradients and gradient clipping")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(
    out: str = "runs/compare_rnn",
    cells: tuple[str, ...] = ("rnn", "gru", "lstm"),
    lengths: tuple[int, ...] = (10, 25, 50, 100, 200),
    seeds: tuple[int, ...] = (0,),
    gate_init: str = "chrono",
    max_epochs: Optional[int] = None,
    long_range: bool = True,
    exploding: bool = False,
    clip_values: tuple[Optional[float], ...] = (None, 1.0),
    threads: int = 1,
) -> None:
    """Run the comparisons and write tables (Markdown, CSV) and plots (PNG) under `out`.

    Args:
        out: Output directory.
        cells: Recurrent cells to compare.
        lengths: Sequence lengths for the long-range (first-symbol recall) task.
        seeds: Seeds per cell and length; the table shows the mean.
        gate_init: "chrono" or "default" gate biases for GRU/LSTM.
        max_epochs: Override the configs' max_epochs (long_range.yaml: 8 epochs of 128 steps).
        long_range: Run the accuracy-vs-length comparison (configs/sequence/long_range.yaml).
        exploding: Run the clipping comparison (configs/sequence/exploding.yaml).
        clip_values: gradient_clip_val per clipping run (null: no clipping).
        threads: torch CPU threads; tiny recurrent nets run fastest on one.
    """
    torch.set_num_threads(threads)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if long_range:
        compare_long_range(out_dir, list(cells), list(lengths), list(seeds), gate_init, max_epochs)
        print("\n" + (out_dir / "long_range.md").read_text())
    if exploding:
        compare_clipping(out_dir, list(clip_values), max_epochs)
        print("\n" + (out_dir / "exploding.md").read_text())
    print(f"Tables and plots in {out_dir}/")


def main(args: Optional[list[str]] = None) -> None:
    """Command line for `compare` (`python experiments/compare_rnn.py --help`)."""
    from jsonargparse import auto_cli

    auto_cli(compare, args=args)


if __name__ == "__main__":
    main()
