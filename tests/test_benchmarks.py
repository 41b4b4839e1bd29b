"""The benchmarks' smoke versions: each runs at tiny sizes and returns its rows (no thresholds on time)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass in the module looks its module up by name
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
    rows = bench.run(smoke=True, threads=1, cnn_precisions=("32",))
    assert [r.measurement.split(" (")[0] for r in rows] == [
        "extraction end to end", "extraction warm-up: first batch", "extraction: CNN alone",
        "extraction: decode + crop alone"]
    assert all(r.result.endswith("frames/s") and _number(r.result) > 0 for r in rows if "warm-up" not in r.measurement)
    assert rows[1].result.endswith(" s") and _number(rows[1].result) > 0
    assert _number(rows[0].ratio) > 0 and "of the bound" in rows[0].ratio and "steady state" in rows[0].notes
    assert sum(r.ratio == "the bound" for r in rows) == 1  # the slower of decoding and the CNN
    assert bench.main(["--smoke", "--workers", "0", "--cnn-precision", "32", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "extraction end to end (cpu, 32-true, batch 2 clips x 2 frames, 0 workers)" in out
    assert "extraction: CNN alone (cpu, bf16 CNN, batch 2 clips x 2 frames)" in out  # side by side, one run
    assert "resnet18-random-2f-32px-bf16" in out  # bf16 features have a cache of their own


def test_backbones_benchmark_smoke(single_thread, capsys):
    bench = _benchmark_module("backbones")
    rows = bench.run(smoke=True, threads=1)
    names = [r.measurement for r in rows]
    assert "efficientnet_lite0, float32" in names and "mobilenet_v2, float32" in names
    assert all(_number(r.result) > 0 for r in rows if r.result.endswith("frames/s"))
    trained = [r for r in rows if r.measurement == "resnet18, float32 features, seed 0"]
    assert len(trained) == 1 and trained[0].result.startswith("BLEU-4 ") and "CIDEr-D" in trained[0].ratio


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


@pytest.mark.slow
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
    assert rows[0] == 3 and all(0 < n <= 12 for n in rows[1:]) and len(rows) <= 6
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


# ---- verdicts from made-up timings: a reference slower than what it bounds is INVALID, never PASS ----

def _common():
    import benchmarks.common  # by name: its dataclass needs its module registered

    return benchmarks.common


def test_a_reference_slower_than_what_it_bounds_is_invalid_not_pass():
    common = _common()
    share, invalid = common.share_outside(reference_s=0.0770, measured_s=0.0067)  # the first H200 run's figures
    assert share < -10 and "slower than what it bounds" in invalid
    assert common.verdict(share, 0.10, higher_is_better=False, invalid=invalid).startswith("INVALID: the reference")
    share, invalid = common.share_outside(0.0105, 0.0100)  # -5 %: inside the noise band, the target is met
    assert invalid is None and common.verdict(share, 0.10, higher_is_better=False) == "PASS"
    share, invalid = common.share_outside(0.0070, 0.0100)  # 30 % outside the model
    assert invalid is None and common.verdict(share, 0.10, higher_is_better=False) == "MISS"
    assert common.share_outside(0.0118, 0.0100)[1] is not None  # -18 %: outside the 15 % band
    assert common.share_outside(0.0118, 0.0100, noise=0.20)[1] is None
    assert "not a positive number" in common.share_outside(0.0, 0.01)[1]
    assert common.verdict(float("nan"), 0.1).startswith("INVALID")


def test_share_outside_band_edge():
    common = _common()
    assert common.share_outside(0.0114, 0.0100)[1] is None  # -14 %
    assert common.share_outside(0.0116, 0.0100)[1] is not None  # -16 %


def test_end_to_end_faster_than_its_bound_is_invalid():
    common = _common()
    ratio, invalid = common.share_of_bound(measured_rate=1708, bound_rate=1052)  # e2e above decoding alone
    assert ratio > 1.15 and "bounds nothing" in invalid
    assert common.verdict(ratio, 0.8, invalid=invalid).startswith("INVALID")
    assert common.share_of_bound(1100, 1052) == (1100 / 1052, None)  # +5 %: noise
    assert common.verdict(common.share_of_bound(700, 1000)[0], 0.8) == "MISS"


def test_extraction_bound_is_the_slower_of_decoding_and_the_cnn():
    extraction = _benchmark_module("extraction")
    # the 1,600-clip H200 run: decode 4,610 f/s, CNN 20,000 f/s, end to end 5,960 f/s -> over the bound: INVALID
    ratio, which, text = extraction.bound_row_text(5960, 4610, 20000, "cuda", batches=49)
    assert which == "decode + crop" and "INVALID" in text and "PASS" not in text
    ratio, which, text = extraction.bound_row_text(4000, 4610, 20000, "cuda", batches=49)
    assert which == "decode + crop" and abs(ratio - 4000 / 4610) < 1e-9 and text.endswith("PASS)")
    _, which, text = extraction.bound_row_text(1708, 13000, 12660, "cuda", batches=49)  # CNN-bound, 13 %
    assert which == "CNN" and text.endswith("MISS)")
    _, _, text = extraction.bound_row_text(4000, 4610, 20000, "cuda", batches=3)  # too few batches to judge
    assert "INVALID: 3 steady-state batches" in text
    _, which, text = extraction.bound_row_text(300, 1234, 330, "cpu", batches=11)  # a CPU is CNN-bound: 91 %
    assert which == "CNN" and text.endswith("(target >= 80%: PASS)")
    _, _, text = extraction.bound_row_text(300, 1234, 330, "cpu", batches=3)
    assert "INVALID: 3 steady-state batches" in text


def test_training_reference_times_each_step_on_an_asynchronous_device():
    import time

    training = _benchmark_module("training")
    syncs = []
    per_step = training.time_steps(lambda b: time.sleep(0.01), [0], [0] * 5, asynchronous=True,
                                   sync=lambda: syncs.append(1))
    assert 0.009 < per_step < 0.03 and len(syncs) == 2  # per step, not the 5 steps' total; no sync per step
    assert 0.009 < training.time_steps(lambda b: time.sleep(0.01), [], [0] * 3, False, lambda: None) < 0.03


def test_training_reference_copies_the_trainers_optimizer_and_warms_every_caption_length():
    training = _benchmark_module("training")
    param = torch.nn.Parameter(torch.zeros(3))
    trainer_opt = torch.optim.AdamW([param], lr=0.002, weight_decay=0.05, foreach=False, amsgrad=True)
    ref = training.reference_optimizer(trainer_opt, [torch.nn.Parameter(torch.zeros(3))])
    assert type(ref) is torch.optim.AdamW
    assert {k: ref.defaults[k] for k in ("lr", "weight_decay", "foreach", "fused", "amsgrad")} == {
        "lr": 0.002, "weight_decay": 0.05, "foreach": False, "fused": None, "amsgrad": True}
    batches = [{"captions": torch.zeros(4, n)} for n in (7, 7, 9, 7, 12, 9)]
    warm = training.warmup_batches(batches, warmup=2)
    assert [b["captions"].shape[1] for b in warm] == [7, 7, 9, 12]


# ---- benchmarks/gpu_check.py: its set-up steps, as far as they go without a GPU ----

def _fake_wheel(folder: Path, name: str = "fakepkg") -> Path:
    import zipfile

    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{name}/__init__.py", "VALUE = 42\n")
        zf.writestr(f"{name}-1.0.dist-info/METADATA", f"Name: {name}\n")
        zf.writestr(f"{name}-1.0.data/purelib/{name}_extra.py", "X = 1\n")
        zf.writestr(f"{name}-1.0.data/scripts/{name}-cli", "#!/bin/sh\n")
    return wheel


def test_gpu_check_site_folder_is_built_unpacked_and_imported_first(tmp_path):
    import subprocess
    import sys

    gpu_check = _benchmark_module("gpu_check")
    tarball = gpu_check.build_site([_fake_wheel(tmp_path)], tmp_path / "carry" / "site.tar.xz")
    names = gpu_check.site_members(tarball)
    assert {"fakepkg", "fakepkg_extra.py", "fakepkg-1.0.dist-info"} <= names and "fakepkg-cli" not in names
    assert gpu_check.missing_from_site(names, ("fakepkg", "fakepkg_extra", "decord")) == ["decord"]
    site = gpu_check.unpack_site(tarball, tmp_path / "unpacked")
    env = gpu_check.environment(site)
    assert env["PYTHONPATH"].split(":")[:2] == [str(site), str(REPO)]  # the carried packages first
    proc = subprocess.run([sys.executable, "-c", "import fakepkg, fakepkg_extra, captioner; print(fakepkg.__file__)"],
                          env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith(str(site)), proc.stderr
    assert gpu_check.check_imports(site, ["fakepkg", "no_such_module_here"], env) == {
        "fakepkg": "ok", "no_such_module_here": "ModuleNotFoundError: No module named 'no_such_module_here'"}


def test_gpu_check_runs_steps_within_its_budget_and_prints_one_table():
    import sys

    gpu_check = _benchmark_module("gpu_check")
    py = sys.executable
    steps = [gpu_check.Step("pytest -m gpu", [py, "-c", "print('== 12 passed, 3 skipped in 9.1s ==')"], cap_s=30,
                            min_s=0),
             gpu_check.Step("fails", [py, "-c", "import sys; sys.exit(3)"], cap_s=30, min_s=0),
             gpu_check.Step("hangs", [py, "-c", "import time; print('started', flush=True); time.sleep(30)"],
                            cap_s=1, min_s=0),
             gpu_check.Step("run_all.py", [py, "-c", "print('| a | 1 | x (PASS) | n |\\n| b | 2 | INVALID: y | n |')"],
                            cap_s=30, min_s=0),
             gpu_check.Step("too late", [py, "-c", "pass"], cap_s=30, min_s=1000)]
    gpu_check.run_steps(steps, budget_s=60, env=gpu_check.environment(None))
    assert [s.status.split(" (")[0] for s in steps] == ["passed", "FAILED", "TIMEOUT", "passed", "skipped"]
    assert steps[1].status == "FAILED (exit 3)" and "started" in steps[2].output and steps[2].seconds < 10
    table = gpu_check.summary_table(steps)
    assert "| pytest -m gpu | passed |" in table and "12 passed, 3 skipped in 9.1s" in table
    assert "2 verdicts: 1 PASS, 0 MISS, 1 INVALID" in table
    assert gpu_check.benchmark_tables(steps).splitlines()[2:] == ["| a | 1 | x (PASS) | n |",
                                                                 "| b | 2 | INVALID: y | n |"]


def test_gpu_check_plan_and_dry_run(tmp_path, capsys):
    gpu_check = _benchmark_module("gpu_check")
    steps = gpu_check.plan("cuda", "runs/gpu_x")
    assert steps[0].argv[1:] == ["scripts/train.py", "--trainer.default_root_dir=runs/gpu_x"]
    assert steps[1].argv[-5:] == ["-m", "gpu", "-p", "no:cacheprovider", "tests"]
    assert steps[2].argv[1:5] == ["benchmarks/run_all.py", "--device", "cuda", "--markdown"]
    assert steps[2].env == {"CAPTIONER_BENCHMARK_RUNS": "runs/gpu_x"}
    assert sum(s.cap_s for s in steps[:3]) <= gpu_check.BUDGET_S < 8 * 60  # the extras use what is left
    tarball = gpu_check.build_site([_fake_wheel(tmp_path)], tmp_path / "site.tar.xz")
    assert gpu_check.main(["run", "--dry-run", "--site", str(tarball), "--unpack-to", str(tmp_path)]) == 1
    out, err = capsys.readouterr()  # the fake site lacks the real packages: named, nothing run
    assert "unpacked" in out and "would run (120 s at most)" in out and "cannot import" in err


def test_gpu_check_carried_site_holds_every_package(tmp_path):
    gpu_check = _benchmark_module("gpu_check")
    if not gpu_check.DEFAULT_TARBALL.is_file():
        pytest.skip("no .gpu/site.tar.xz here (python benchmarks/gpu_check.py build-site)")
    assert gpu_check.missing_from_site(gpu_check.site_members(gpu_check.DEFAULT_TARBALL)) == []
    assert gpu_check.DEFAULT_TARBALL.stat().st_size < 60 * 2**20  # a device call carries 64 MiB in all


def test_benchmarks_find_the_checkpoint_of_another_root(tmp_path, monkeypatch):
    import benchmarks.common as common

    ckpt = REPO / "runs" / "zz_test_root" / "logs" / "version_0" / "checkpoints" / "epoch=1.ckpt"
    monkeypatch.setenv("CAPTIONER_BENCHMARK_RUNS", "runs/zz_test_root")
    assert common.newest_checkpoint() is None
    ckpt.parent.mkdir(parents=True)
    try:
        ckpt.write_bytes(b"")
        assert common.newest_checkpoint() == ckpt
    finally:
        import shutil

        shutil.rmtree(REPO / "runs" / "zz_test_root")
