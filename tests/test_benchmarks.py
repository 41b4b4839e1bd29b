"""The benchmarks' smoke versions: each runs at tiny sizes and returns its rows (no thresholds on time)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _number(text: str) -> float:
    return float(re.match(r"-?[\d.]+", text).group())


def test_training_benchmark_smoke(single_thread, capsys):
    bench = _benchmark_module("training")
    rows = bench.run(smoke=True, threads=1)
    names = [r.measurement for r in rows]
    for b in (8, 32):
        assert f"training, batch {b}, Trainer (cpu, 32-true)" in names
        assert f"training, batch {b}, model alone (cpu, 32-true)" in names
        assert f"training, batch {b}, share of step outside the model" in names
        assert f"training, batch {b}, before: features read per item" in names
    for r in rows:
        value = _number(r.result)
        assert value > 0 or "share" in r.measurement  # a share can come out negative on a noisy machine
        if "Trainer" in r.measurement or "model alone" in r.measurement:
            assert r.result.endswith("clips/s") and r.ratio.endswith("tokens/s") and _number(r.ratio) > 0
    assert bench.main(["--smoke", "--no-baseline", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "training, batch 2, share of step outside the model" in out


def test_extraction_benchmark_smoke(single_thread, capsys):
    bench = _benchmark_module("extraction")
    rows = bench.run(smoke=True, threads=1)
    assert [r.measurement.split(" (")[0] for r in rows] == [
        "extraction end to end", "extraction bound: CNN alone", "extraction: decode + crop alone"]
    assert all(r.result.endswith("frames/s") and _number(r.result) > 0 for r in rows)
    assert _number(rows[0].ratio) > 0 and "of the CNN alone" in rows[0].ratio
    assert bench.main(["--smoke", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "extraction end to end (cpu, 32-true, batch 2 clips x 2 frames, 0 workers)" in out


def test_frame_sampling_benchmark_smoke(single_thread, capsys):
    bench = _benchmark_module("frame_sampling")
    rows = bench.run(smoke=True, threads=1)
    assert [r.measurement for r in rows] == [
        "frame sampling: full decode, PyAV (baseline)", "frame sampling: exact uniform (default)",
        "frame sampling: keyframe (--fast-seek)", "frame sampling: of which probe_video",
        "frame sampling: of which opening decord's reader"]
    assert all(_number(r.result) > 0 for r in rows)
    for r in rows[1:3]:
        assert "faster than full decode" in r.ratio and _number(r.ratio) > 0
        assert "PASS" not in r.ratio and "MISS" not in r.ratio  # smoke: no targets
    assert "15 keyframes" in rows[2].notes  # 3 s at 25 fps, a keyframe every 5 frames
    assert bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "frame sampling: keyframe (--fast-seek)" in out


def test_memory_benchmark_smoke(capsys):
    bench = _benchmark_module("memory")
    rows = bench.run(smoke=True, threads=1)
    assert [r.measurement for r in rows] == [
        "peak memory: caption a 1 s clip", "peak memory: caption a 3 s video",
        "peak memory: caption a 3 s video, --fast-seek"]
    assert all(r.result.endswith("MiB") and _number(r.result) > 0 for r in rows)
    assert _number(rows[1].ratio) >= 1 and "the short clip's" in rows[1].ratio  # peaks only grow in one process
    assert "tiny untrained" in rows[0].notes


def test_beam_search_benchmark_smoke_gives_the_same_captions_both_ways(single_thread):
    rows = _benchmark_module("beam_search").run(smoke=True, threads=1)
    assert [r.measurement for r in rows] == ["beam search, 6 videos batched", "beam search, 6 videos one at a time",
                                            "beam search without repeat blocking (no_repeat_ngram 0)",
                                            "beam search, same captions batched vs one at a time",
                                            "beam search bound: its matrix products alone"]
    assert rows[3].result == "6/6" and rows[3].ratio == "PASS"
    assert _number(rows[0].result) > 0 and "x one video at a time" in rows[0].ratio
    assert "with blocking" in rows[2].ratio and "target within 10%" in rows[2].ratio
    assert _number(rows[4].result) > 0 and "of the batched time" in rows[4].ratio


def test_beam_search_bound_counts_the_rows_of_every_step():
    beam = _benchmark_module("beam_search")
    model = beam.tiny_captioner()
    video = torch.randn(3, model.pool.feature_dim)
    rows = beam.rows_per_step(model.decoder, lambda: model.decoder.beam_search(video, beam_size=4, max_len=6))
    assert rows[0] == 3 and all(n % 4 == 0 and 0 < n <= 12 for n in rows[1:]) and len(rows) <= 6
    assert "_step" not in vars(model.decoder)  # the counting wrapper is gone again
    assert beam.matmul_bound(model.decoder, rows, repeats=1, sync=lambda: None) > 0


def test_run_all_prints_one_table_and_fails_when_a_benchmark_does(single_thread, capsys, monkeypatch):
    run_all = _benchmark_module("run_all")
    assert run_all.main(["--smoke", "--only", "beam_search", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "command: python benchmarks/run_all.py --smoke --only beam_search" in out
    assert "[beam_search] batched beam search vs one video at a time" in out
    assert "| beam search, same captions batched vs one at a time | 6/6 | PASS |" in out

    class Broken:
        @staticmethod
        def run(smoke: bool = False):
            raise RuntimeError("no video decoder\nsecond line")

    monkeypatch.setattr(run_all, "load", lambda name: Broken)
    assert run_all.main(["--smoke", "--only", "memory", "training"]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("RuntimeError") == 2 and "no video decoder" in captured.out
    assert "failed: training, memory" in captured.err
