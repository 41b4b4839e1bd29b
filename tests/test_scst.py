"""CIDEr-D as the checkpoint monitor, and self-critical training (SCST) as a phase of the captioning system."""

import json

import pytest
import torch

from captioner.models.captioner import find_checkpoint


def test_val_cider_as_monitor_names_and_finds_the_best_checkpoint(tiny_datamodule_args, tmp_path):
    from conftest import tiny_args

    from captioner.cli import train_main

    root = tmp_path / "run"
    metrics = train_main(tiny_args(tiny_datamodule_args, root, "--trainer.max_epochs=2", "--model.num_samples=0",
                                   "--model.monitor=val/cider"))
    [best] = root.rglob("epoch*-cider_*.ckpt")
    assert find_checkpoint(root) == best
    assert "test/cider" in metrics and json.loads((best.parent / "test_metrics.json").read_text())["cider"] >= 0
