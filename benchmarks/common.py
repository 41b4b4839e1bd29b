"""What every benchmark shares: a result row, the table printer, the machine description, timers, peak memory."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/ on the path, not the repo
    sys.path.insert(0, str(REPO))

RUNS_GLOB = "runs/synthetic/logs/version_*/checkpoints/epoch*.ckpt"  # the main job's best checkpoints


def imagenet_weights(backbone: str) -> str:
    """The ImageNet weights name the benchmarks use for `backbone`: the offline Lite0's `DEFAULT` (its only ones),
    else torchvision's `IMAGENET1K_V1` (MobileNetV2's offline file; ResNets' original weights)."""
    from captioner.config import OFFLINE_BACKBONE

    return "DEFAULT" if backbone == OFFLINE_BACKBONE else "IMAGENET1K_V1"


def newest_checkpoint() -> Path | None:
    """The newest best checkpoint of the main job (`python scripts/train.py`, its latest run), or None before it ran.

    `CAPTIONER_BENCHMARK_RUNS=<root>` looks under that `--trainer.default_root_dir` instead (gpu_check's run)."""
    root = os.environ.get("CAPTIONER_BENCHMARK_RUNS")
    pattern = f"{root.rstrip('/')}/logs/version_*/checkpoints/epoch*.ckpt" if root else RUNS_GLOB
    found = sorted(REPO.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


@dataclass
class Row:
    """One measured figure: the absolute result, and (when there is one) the ratio against its baseline/bound."""

    measurement: str
    result: str
    ratio: str = ""  # e.g. "12.3x faster than full decode (target >= 5x): PASS"
    notes: str = ""


NOISE_BAND = 0.15  # how far a figure may stray past what is physically possible before it is not believed


def share_outside(reference_s: float, measured_s: float, noise: float = NOISE_BAND) -> tuple[float, str | None]:
    """The share of `measured_s` spent outside its reference (`1 - reference_s / measured_s`), and why it cannot be
    trusted, or None.

    The reference times part of the measured work (the model alone inside a Trainer step), so it cannot be slower
    than the whole: a share below `-noise` means the reference times something else (other precision or optimizer,
    a host sync per step, kernels still warming up) or the run was too noisy, never that the target was met.
    """
    if not (_positive(reference_s) and _positive(measured_s)):
        return float("nan"), f"a time is not a positive number (reference {reference_s!r} s, measured {measured_s!r} s)"
    share = 1 - reference_s / measured_s
    if share < -noise:
        return share, (f"the reference is {reference_s / measured_s:.1f}x slower than what it bounds "
                       f"({share:.0%} outside, below -{noise:.0%}): the reference is broken or the run too noisy")
    return share, None


def share_of_bound(measured_rate: float, bound_rate: float, noise: float = NOISE_BAND) -> tuple[float, str | None]:
    """`measured_rate / bound_rate` (a throughput against the fastest it could be), and why it cannot be trusted,
    or None: a measured rate above the bound by more than `noise` means the bound is not one."""
    if not (_positive(measured_rate) and _positive(bound_rate)):
        return float("nan"), f"a rate is not a positive number (measured {measured_rate!r}, bound {bound_rate!r})"
    ratio = measured_rate / bound_rate
    if ratio > 1 + noise:
        return ratio, (f"end to end is {ratio:.0%} of its bound, above {1 + noise:.0%}: the bound is slower than "
                       "what it bounds, so it bounds nothing")
    return ratio, None


def _positive(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def verdict(value: float, target: float, higher_is_better: bool = True, invalid: str | None = None) -> str:
    """PASS or MISS against `target`; `INVALID: <reason>` when the figure cannot be believed (`invalid`, or not a
    finite number), whatever its value."""
    if invalid is None and not (isinstance(value, (int, float)) and math.isfinite(value)):
        invalid = f"the figure is {value!r}"
    if invalid is not None:
        return f"INVALID: {invalid}"
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "MISS"


def format_table(rows: list[Row], title: str | None = None) -> str:
    header = ("measurement", "result", "ratio / target", "notes")
    cells = [header] + [(r.measurement, r.result, r.ratio, r.notes) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = [title, ""] if title else []
    lines.append(" | ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    lines.append("-|-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip() for cell in cells[1:]]
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device=None) -> str:
    import torch

    device = torch.device(device or "cpu")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores visible, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {device.type}: {where}")


def timed(fn, repeats: int = 1, warmup: int = 0) -> list[float]:
    """Wall-clock seconds of `repeats` calls of `fn` (after `warmup` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def quiet_lightning() -> None:
    """Only warnings from Lightning: the Trainer's start-up notes would bury the table."""
    import logging

    import pytorch_lightning  # noqa: F401  (it sets its loggers' level on import: quieten them after)

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
