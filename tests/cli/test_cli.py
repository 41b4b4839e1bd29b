"""`captioner caption` end to end: subprocesses on real and generated clips, plus in-process argument handling."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from badinputs import NAMES
from conftest import moving_square
from test_api import save_tiny_checkpoint, write_bad_videos
from test_video import write_damaged_mp4

from captioner import VideoCaptioner
from captioner.cli import main
from captioner.cli.caption import build_parser
from captioner.cli.caption import main as caption_command
from captioner.data.synthetic import write_mp4

REPO = Path(__file__).resolve().parents[2]
OPTIONS = ("--checkpoint", "--beam-size", "--max-length", "--frames", "--json", "--device", "--batch-size",
           "--threads", "--progress", "--verbose")


def run(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    """One CLI process, as a user runs it; `script` = a file under scripts/ instead of `python -m captioner caption`."""
    cmd = [sys.executable, str(REPO / script)] if script else [sys.executable, "-m", "captioner", "caption"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def without_domain_warnings(stderr: str) -> str:
    """stderr less the out-of-domain warnings (the tiny random-weight checkpoint finds real videos unfamiliar)."""
    return "".join(line for line in stderr.splitlines(keepends=True)
                   if not (line.startswith("captioner caption: warning: ") and "the caption is unreliable" in line))


@pytest.fixture(scope="module")
def ckpt(trained) -> Path:
    return trained[2]


@pytest.fixture(scope="module")
def clips(real_clips, tmp_path_factory) -> dict:
    """A real clip, a folder of two generated clips, and files that must fail."""
    root = tmp_path_factory.mktemp("cli")
    folder = root / "generated"
    folder.mkdir()
    write_mp4(moving_square(16, 48), folder / "b_square.mp4")
    write_mp4(moving_square(10, 64)[:, ::-1].copy(), folder / "a_square.mp4")
    real = min(real_clips, key=lambda p: p.stat().st_size)  # the smallest: the test stays fast
    good = [real, folder / "a_square.mp4", folder / "b_square.mp4"]
    bad = write_bad_videos(root / "bad")
    return {"real": real, "folder": folder, "good": good, "bad": bad}


@pytest.fixture(scope="module")
def json_run(ckpt, clips) -> tuple[subprocess.CompletedProcess, list]:
    bad = clips["bad"]
    proc = run(clips["real"], bad["missing"], clips["folder"], bad["not_a_video"], bad["truncated"], bad["empty"],
               "--checkpoint", ckpt, "--json", "--batch-size", 1)
    return proc, json.loads(proc.stdout)


def test_json_batch_with_bad_files_captions_the_others(json_run, clips):
    proc, records = json_run
    bad = clips["bad"]
    assert proc.returncode == 1
    order = [clips["real"], bad["missing"], *clips["good"][1:], bad["not_a_video"], bad["truncated"], bad["empty"]]
    assert [r["video"] for r in records] == [str(p) for p in order]
    good = [r for r in records if "caption" in r]
    assert [r["video"] for r in good] == [str(p) for p in clips["good"]]
    assert all(isinstance(r["caption"], str) and "error" not in r for r in good)
    failed = [r for r in records if "error" in r]
    assert len(failed) == 4 and all("caption" not in r and r["error"] for r in failed)
    # one clear line per bad file on stderr, and no traceback
    assert "Traceback" not in proc.stderr
    for name in ("missing", "not_a_video", "truncated", "empty"):
        [line] = [ln for ln in proc.stderr.splitlines() if str(bad[name]) in ln]
        assert line.startswith("captioner caption: ")
    assert "file not found" in proc.stderr and "4 of 7 videos could not be captioned" in proc.stderr


@pytest.mark.slow
def test_text_output_matches_json_and_the_library(json_run, clips, ckpt):
    proc = run(clips["real"], clips["folder"], "--checkpoint", ckpt, "--batch-size", 2, script="scripts/caption.py")
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [path for path, _ in lines] == [str(p) for p in clips["good"]]
    text_captions = [caption for _, caption in lines]
    # the three-line library use gives the same captions as the CLI, in another process, for the same batches
    # (batches of 2 here, of 1 in the JSON run: float rounding may differ between batch sizes)
    model = VideoCaptioner.from_checkpoint(ckpt)
    assert model.caption(clips["good"], batch_size=2) == text_captions
    assert [model.caption(p)[0] for p in clips["good"]] == [r["caption"] for r in json_run[1] if "caption" in r]
    assert without_domain_warnings(proc.stderr).strip() == ""


def test_bad_checkpoint_is_one_clear_line(clips, tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x80\x02 this is not a checkpoint")
    proc = run(clips["real"], "--checkpoint", junk)
    assert proc.returncode == 2
    assert proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert str(junk) in line and "not a loadable checkpoint" in line


def test_missing_or_foreign_checkpoint_in_process(clips, tmp_path, capsys):
    import torch

    assert caption_command([str(clips["real"]), "--checkpoint", str(tmp_path / "nope.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.ckpt: checkpoint not found" in err
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1.0}}, other)
    assert caption_command([str(clips["real"]), "--checkpoint", str(other)]) == 2
    assert "not a captioner checkpoint" in capsys.readouterr().err


def test_overrides_and_frames_warning(ckpt, clips, capsys):
    real = str(clips["real"])
    assert caption_command([real, "--checkpoint", str(ckpt), "--beam-size", "1", "--max-length", "3",
                            "--frames", "6", "--device", "cpu", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    path, caption = out.rstrip("\n").split("\t")
    assert path == real and len(caption.split()) <= 3
    assert "warning: sampling 6 frames" in err and "trained with 4" in err
    model = VideoCaptioner.from_checkpoint(ckpt)
    assert [caption] == model.caption_frames([model.read_clip(real, 6)], beam_size=1, max_len=3)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_clear_error(ckpt, clips, capsys):
    assert caption_command([str(clips["real"]), "--checkpoint", str(ckpt), "--device", "cuda"]) == 2
    assert "no GPU" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    assert main(["--help"]) == 0
    assert "caption" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert option in text
    assert text.count("default") >= len(OPTIONS) - 1  # --checkpoint is required


def test_usage_errors_exit_2_without_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        caption_command(["clip.mp4"])  # no --checkpoint
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        caption_command(["clip.mp4", "--checkpoint", "x.ckpt", "--batch-size", "0"])
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "must be at least 1" in err and "Traceback" not in err


@pytest.mark.slow
def test_benchmark_smoke(ckpt, capsys):
    spec = importlib.util.spec_from_file_location("caption_latency", REPO / "benchmarks" / "caption_latency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--checkpoint", str(ckpt), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for row in ("warm latency, one", "open + decode", "cold start, CLI", "folder of 3 clips, in process",
                "folder of 3 clips, CLI", "machine:"):
        assert row in out
    assert out.count("videos/s") == 2


def test_fast_seek_option_picks_keyframe_sampling(tmp_path, monkeypatch, capsys):
    """--fast-seek reads frames with seek="keyframe"; without it, the checkpoint's own sampling (exact) is used."""
    import captioner.video as video
    from captioner.config import FeatureSpec
    from captioner.vocab import SPECIALS

    hp = {"vocab": [*SPECIALS, "a", "square"], "feature_dim": 1280, "embed_dim": 8, "hidden_dim": 8,
          "feature_spec": FeatureSpec(weights=None, num_frames=4, image_size=32).to_dict(), "beam_size": 1,
          "max_len": 3}
    ckpt = save_tiny_checkpoint(hp, tmp_path / "tiny.ckpt")
    clip = tmp_path / "clip.mp4"
    write_mp4(moving_square(16, 48), clip)
    seen = []
    read_frames = video.read_frames
    monkeypatch.setattr(video, "read_frames",
                        lambda *a, seek, **k: seen.append(seek) or read_frames(*a, seek=seek, **k))
    for flag, expected in ((["--fast-seek"], "keyframe"), ([], "exact"), (["--no-fast-seek"], "exact")):
        assert caption_command([str(clip), "--checkpoint", str(ckpt), "--device", "cpu", *flag]) == 0
        assert seen.pop() == expected
    assert str(clip) in capsys.readouterr().out
    assert "--fast-seek" in build_parser().format_help()


def test_a_run_folder_stands_for_its_newest_best_checkpoint(trained, clips, tmp_path, capsys):
    _, root, best = trained
    real = str(clips["real"])
    assert caption_command([real, "--checkpoint", str(root), "--beam-size", "1", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert without_domain_warnings(err).strip() == f"captioner caption: checkpoint {best}"
    assert out.split("\t")[1].strip() == VideoCaptioner.from_checkpoint(best).caption([real], beam_size=1)[0]
    assert caption_command([real, "--checkpoint", str(tmp_path)]) == 2  # a folder without checkpoints
    assert f"{tmp_path}: no checkpoint in this folder" in capsys.readouterr().err
    for name in ("msvd", "synthetic"):  # a folder above two runs: which one is meant?
        folder = tmp_path / "runs" / name / "logs" / "version_0" / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "epoch01-bleu4_0.5000.ckpt").write_bytes(b"x")
    assert caption_command([real, "--checkpoint", str(tmp_path / "runs")]) == 2
    assert "holds the checkpoints of 2 runs" in capsys.readouterr().err


def test_training_tests_the_best_checkpoint_of_the_whole_run(tiny_datamodule_args, tmp_path, monkeypatch, capsys):
    """A run resumed into a new version folder tests the run's best, wherever it is; a fresh run its own best."""
    import pytorch_lightning as pl
    from conftest import tiny_args

    from captioner.cli.train import train_main
    from captioner.systems.captioning import CaptioningSystem

    class StopAtEpoch(pl.Callback):  # a job that dies after epoch 1, as a node failure would
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise RuntimeError("stopped")

    configure = CaptioningSystem.configure_callbacks
    monkeypatch.setattr(CaptioningSystem, "configure_callbacks", lambda self: [*configure(self), StopAtEpoch()])
    root = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stopped"):
        train_main(tiny_args(tiny_datamodule_args, root))
    monkeypatch.setattr(CaptioningSystem, "configure_callbacks", configure)
    first = root / "logs" / "version_0" / "checkpoints"
    (kept,) = first.glob("epoch*.ckpt")
    best = kept.rename(first / "epoch01-bleu4_0.9999.ckpt")  # the best score stays in version_0, whatever the run
    capsys.readouterr()
    resumed = train_main(tiny_args(tiny_datamodule_args, root, f"--ckpt_path={first / 'last.ckpt'}"))
    out = capsys.readouterr().out
    (own,) = (root / "logs" / "version_1" / "checkpoints").glob("epoch*.ckpt")  # the resumed fit's own best
    assert f"Testing the run's best checkpoint, {best} (this resumed fit's best: {own})" in out
    assert f"Best checkpoint: {best}" in out
    tested = json.loads((own.parent / "test_metrics.json").read_text())  # in the resumed fit's own folder
    assert tested["bleu4"] == pytest.approx(resumed["test/bleu4"])
    # a fresh run in the same folder is another run: it tests its own best, not version_0's higher score
    capsys.readouterr()
    train_main(tiny_args(tiny_datamodule_args, root))
    out = capsys.readouterr().out
    (fresh,) = (root / "logs" / "version_2" / "checkpoints").glob("epoch*.ckpt")
    assert f"Best checkpoint: {fresh}" in out and "Testing the run's best" not in out


@pytest.mark.slow
def test_libav_lines_only_with_verbose(ckpt, tmp_path):
    damaged = write_damaged_mp4(tmp_path / "damaged.mp4")  # decodes, with libav errors on every damaged slice
    quiet = run(damaged, "--checkpoint", ckpt, "--device", "cpu")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stdout.startswith(f"{damaged}\t") and without_domain_warnings(quiet.stderr) == ""
    verbose = run(damaged, "--checkpoint", ckpt, "--device", "cpu", "--verbose")
    assert verbose.returncode == 0 and verbose.stdout == quiet.stdout
    assert "[h264 @ 0x" in verbose.stderr


# One process over the whole bad-input corpus (tests/badinputs.py)

# what each layer says for a directory: sampling and extraction read it as a file, the CLI as a folder of videos
CLI_REASON = {"directory": "directory contains no video files"}



@pytest.mark.slow
def test_caption_cli_over_the_corpus(bad_corpus, trained):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONIOENCODING": "utf-8"}
    paths = [str(case.path) for case in bad_corpus.values()]
    proc = subprocess.run([sys.executable, "-m", "captioner", "caption", *paths, "--checkpoint", str(trained[2]),
                           "--json", "--threads", "1"], capture_output=True, text=True, encoding="utf-8", cwd=REPO,
                          env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    records = json.loads(proc.stdout)
    assert [r["video"] for r in records] == paths  # every input once, in order
    errors = proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr
    for name, record in zip(NAMES, records):
        case = bad_corpus[name]
        if case.readable:
            assert set(record) == {"video", "caption", "score", "familiarity", "in_domain"}, record
            assert isinstance(record["caption"], str) and record["score"] <= 0, record
        else:
            reason = CLI_REASON.get(name, case.reason)
            assert set(record) == {"video", "error"} and reason in record["error"], record
            [line] = [e for e in errors if e.startswith(f"captioner caption: {case.path}: ")]
            assert reason in line
    bad = sum(not c.readable for c in bad_corpus.values())
    assert errors[-1] == f"captioner caption: {bad} of {len(NAMES)} videos could not be captioned"


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """`captioner ... | head`: the pipe closed before the command writes gives exit 141, no traceback."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "captioner", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the interpreter has even started: every write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err and err == ""
