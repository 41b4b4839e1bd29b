"""Train the captioner with each temporal encoder on the synthetic set and tabulate test BLEU and direction accuracy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from captioner.cli.train import CONFIG_DIR, train_main
from captioner.config import TEMPORAL_CHOICES

COLUMNS = ("bleu1", "bleu2", "bleu3", "bleu4", "dir_bleu4", "direction_acc")


def run_args(temporal: str, grid: int, root: Path, extra: list[str]) -> list[str]:
    """The training command line of one run: synthetic config + the temporal choice + the feature grid."""
    return ["--config", str(CONFIG_DIR / "synthetic.yaml"), f"--model.temporal={temporal}",
            f"--data.features.spatial_grid={grid}", f"--trainer.default_root_dir={root / f'grid{grid}-{temporal}'}",
            *extra]


def run(temporal: str, grid: int, root: Path, extra: list[str]) -> dict:
    """One training run (see `run_args`); returns its test metrics."""
    metrics = train_main(run_args(temporal, grid, root, extra))
    return {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("test/")}


def markdown_table(rows: list[tuple[str, int, dict]]) -> str:
    head = "| temporal encoder | features | " + " | ".join(COLUMNS) + " |"
    sep = "|" + "---|" * (len(COLUMNS) + 2)
    lines = [head, sep]
    for temporal, grid, m in rows:
        feats = "global pool" if grid == 1 else f"{grid}x{grid} grid"
        lines.append(f"| {temporal} | {feats} | " + " | ".join(f"{m.get(c, float('nan')):.3f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--temporal", nargs="+", default=list(TEMPORAL_CHOICES), choices=TEMPORAL_CHOICES,
                        help="temporal encoders to compare")
    parser.add_argument("--grids", nargs="+", type=int, default=[1, 2], help="spatial grids of the CNN features")
    parser.add_argument("--out", default="runs/temporal", help="folder for the runs and the table")
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    root = Path(args.out)
    rows = []
    for grid in args.grids:
        for temporal in args.temporal:
            rows.append((temporal, grid, run(temporal, grid, root, extra)))
            table = markdown_table(rows)
            (root / "table.md").write_text(table + "\n")
            (root / "results.json").write_text(json.dumps([{"temporal": t, "grid": g, **m} for t, g, m in rows],
                                                          indent=1))
    print("\n" + table)
    print(f"\nWritten to {root / 'table.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
