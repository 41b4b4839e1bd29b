"""Tests for the experiments: the RNN/GRU/LSTM comparison (tables, plots, a one-epoch run) and the temporal one."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import compare_temporal
from experiments.compare_rnn import clipping_table, compare, long_range_table, plot_accuracy_vs_length


# tiny recurrent nets gain nothing from intra-op threads, and on a busy small CPU they lose a lot
pytestmark = pytest.mark.usefixtures("single_thread")


def test_long_range_table_and_plot(tmp_path):
    rows = [
        {"cell": cell, "seq_len": t, "seed": s, "test_acc": acc, "steps": 100, "seconds": 2.0}
        for cell, acc in (("rnn", 0.25), ("lstm", 1.0))
        for t in (10, 200)
        for s in (0, 1)
    ]
    table = long_range_table(rows, ["rnn", "lstm"], [10, 200]).splitlines()
    assert table[0] == "| cell | T=10 | T=200 | steps (mean) | time (s, total) |"
    assert table[2] == "| rnn | 0.250 (0.25-0.25) | 0.250 (0.25-0.25) | 100 | 8 |"
    plot_accuracy_vs_length(rows, ["rnn", "lstm"], [10, 200], tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_clipping_table_reports_divergence():
    rows = [
        {"run": "no_clip", "max_grad_norm": 3e9, "median_grad_norm": 5.0, "max_applied_norm": 3e9,
         "first_nan_step": 4, "final_train_loss": float("nan"), "test_acc": 0.25},
        {"run": "clip_1", "max_grad_norm": 600.0, "median_grad_norm": 0.5, "max_applied_norm": 1.0,
         "first_nan_step": None, "final_train_loss": 0.01, "test_acc": 1.0},
    ]  # fmt: skip
    lines = clipping_table(rows).splitlines()
    assert "| no_clip | 3e+09 |" in lines[2] and "| 4 |" in lines[2]
    assert "| never |" in lines[3]


def test_compare_end_to_end_one_epoch(tmp_path):
    compare(out=str(tmp_path), cells=("rnn",), lengths=(5,), max_epochs=1, exploding=True)
    for name in ("long_range.md", "long_range.csv", "long_range.png", "exploding.md", "exploding.csv", "exploding.png"):
        assert (tmp_path / name).exists(), name
    (row,) = list(csv.DictReader(open(tmp_path / "long_range.csv")))
    assert row["cell"] == "rnn" and row["seq_len"] == "5" and 0 <= float(row["test_acc"]) <= 1
    runs = {r["run"]: r for r in csv.DictReader(open(tmp_path / "exploding.csv"))}
    assert set(runs) == {"no_clip", "clip_1"}
    assert float(runs["clip_1"]["max_applied_norm"]) <= 1.0 + 1e-4
    assert float(runs["no_clip"]["max_grad_norm"]) > float(runs["clip_1"]["max_applied_norm"])


@pytest.mark.parametrize("script", ["compare_rnn.py", "compare_temporal.py"])
@pytest.mark.slow
def test_experiment_runs_as_a_script(script):
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "experiments" / script), "--help"], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--out" in done.stdout


def test_compare_temporal_runs_are_settings_the_cli_takes(tmp_path):
    from captioner.cli.train import build_cli

    cli = build_cli(compare_temporal.run_args("gru", 2, tmp_path, ["--trainer.max_epochs", "1"]))
    assert cli.model.hparams.temporal == "gru" and cli.datamodule.spec.spatial_grid == 2
    assert str(cli.trainer.default_root_dir) == str(tmp_path / "grid2-gru") and cli.trainer.max_epochs == 1


def test_compare_temporal_writes_the_table(tmp_path, monkeypatch):
    calls = []

    def fake_train(args):
        calls.append(args)
        return {"test/bleu4": 0.5, "test/direction_acc": 0.75, "val/bleu4": 0.1}

    monkeypatch.setattr(compare_temporal, "train_main", fake_train)
    assert compare_temporal.main(["--temporal", "mean", "gru", "--grids", "1", "--out", str(tmp_path)]) == 0
    assert len(calls) == 2
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[2].startswith("| mean | global pool |") and "0.500" in table[2] and "0.750" in table[2]
    assert "| nan |" in table[2]  # a metric the run did not report
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["temporal"] for r in results] == ["mean", "gru"] and "val/bleu4" not in results[0]
