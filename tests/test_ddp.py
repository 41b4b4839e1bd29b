"""Under DDP, every process's captions are gathered before BLEU: 2 CPU processes score exactly like 1."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_validate.py")


@pytest.mark.slow
def test_two_process_ddp_bleu_equals_one_process(trained, tiny_datamodule_args, tmp_path):
    _, _, best = trained
    scores = {}
    for n in (1, 2):
        out = tmp_path / f"bleu_{n}.json"
        proc = subprocess.run([sys.executable, str(SCRIPT), str(best), json.dumps(tiny_datamodule_args), str(n),
                               str(out), str(tmp_path / f"root{n}")], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        scores[n] = json.loads(out.read_text())
    assert scores[2]["world_size"] == 2
    # 5 validation clips on 2 processes: the sampler pads one process with a repeated clip, counted once
    for k in ("val/bleu1", "val/bleu2", "val/bleu3", "val/bleu4"):
        assert scores[2][k] == scores[1][k], k
    assert scores[1]["val/bleu1"] > 0
