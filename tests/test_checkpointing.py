"""captioner.checkpointing: atomic writes, finding and safely reading checkpoints, RNG state, preemption names."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from badinputs import SPEC

from captioner import VideoCaptioner
from captioner.callbacks import collect_rng_states, next_hpc_checkpoint, set_rng_states
from captioner.checkpointing import (CheckpointError, best_checkpoint, best_of_run, find_checkpoint, load_safely,
                                     read_checkpoint)
from captioner.features.cache import FeatureCache
from captioner.io import atomic_write, write_json_atomic, write_text_atomic


def test_atomic_write_replaces_the_file_only_when_the_block_ends_cleanly(tmp_path):
    path = tmp_path / "report.txt"
    write_text_atomic(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]  # no temporary file left
    with atomic_write(path) as f:
        f.write("new é")
        assert path.read_text() == "old"  # readers see the old file while the new one is written
        assert (tmp_path / f".report.txt.{os.getpid()}.tmp").exists()
    assert path.read_text(encoding="utf-8") == "new é"


def test_atomic_write_binary_with_fsync_and_a_temporary_name_of_the_callers(tmp_path):
    path = tmp_path / "clip.npy"
    name = f".clip.{os.getpid()}.tmp.npy"  # FeatureCache's, which remove_stale_temp_files globs
    with atomic_write(path, "wb", fsync=True, temp_name=name) as f:
        assert f.name == str(tmp_path / name)
        np.save(f, np.arange(3, dtype=np.float16))
    assert np.load(path).tolist() == [0, 1, 2] and not (tmp_path / name).exists()


def test_feature_cache_save_is_byte_identical_to_np_save(tmp_path):
    from captioner.config import FeatureSpec
    from captioner.features.cache import FeatureCache

    feats = torch.randn(4, 6)
    cache = FeatureCache(tmp_path / "cache", FeatureSpec("resnet18", None, 4))
    cache.save("clip", feats)
    np.save(tmp_path / "direct.npy", feats.to(torch.float16).numpy())
    assert cache.path("clip").read_bytes() == (tmp_path / "direct.npy").read_bytes()
    assert [p.name for p in cache.dir.iterdir()] == ["clip.npy"]


def test_write_json_atomic_makes_the_folder_and_keeps_unicode(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    write_json_atomic(path, {"caption": "un chat noir", "café": 1})
    assert path.read_text(encoding="utf-8") == '{\n "caption": "un chat noir",\n "café": 1\n}\n'
    assert json.loads(path.read_text(encoding="utf-8"))["café"] == 1


def test_checkpoint_writer_leaves_no_temporary_file_and_sweeps_a_killed_runs(tmp_path):
    from captioner.callbacks import AtomicCheckpointIO

    stale = tmp_path / ".hpc_ckpt-2.ckpt.4242.tmp"  # left by a job killed while saving: `ckpt-`, never `ckpt_`
    stale.write_bytes(b"partial")
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, tmp_path / "hpc_ckpt_2.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["hpc_ckpt_2.ckpt"]
    assert torch.equal(torch.load(tmp_path / "hpc_ckpt_2.ckpt", weights_only=True)["w"], torch.ones(2))


def test_reading_refuses_what_is_not_a_captioner_checkpoint_in_one_line(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk.ckpt: not a loadable checkpoint \(") as err:
        load_safely(junk)
    assert "\n" not in str(err.value)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    assert set(load_safely(other, mmap=True)) == {"state_dict"}  # any checkpoint loads
    with pytest.raises(CheckpointError, match="not a captioner checkpoint .no vocabulary or feature spec"):
        read_checkpoint(other)
    flat = tmp_path / "flat.ckpt"
    torch.save({"hyper_parameters": {"vocab": ["a"], "feature_spec": {"backbone": "x"}}, "state_dict": [1]}, flat)
    with pytest.raises(CheckpointError, match="its state_dict is not a dict"):
        read_checkpoint(flat)


def test_best_checkpoint_ranks_by_score_then_age_and_best_of_run_stays_in_its_run(tmp_path):
    run = tmp_path / "run"
    first, resumed = run / "logs" / "version_0" / "checkpoints", run / "logs" / "version_1" / "checkpoints"
    other = run / "nested" / "logs" / "version_0" / "checkpoints"  # another run's default_root_dir beneath
    for folder, name in ((first, "epoch03-bleu4_0.5000.ckpt"), (resumed, "epoch07-bleu4_0.4000.ckpt"),
                         (other, "epoch01-bleu4_0.9000.ckpt")):
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b"x")
    best_now = resumed / "epoch07-bleu4_0.4000.ckpt"
    assert best_of_run(run, best_now) == first / "epoch03-bleu4_0.5000.ckpt"  # the earlier fit's best
    assert best_checkpoint([best_now, first / "epoch03-bleu4_0.5000.ckpt"]).name == "epoch03-bleu4_0.5000.ckpt"
    os.utime(best_now, (1, 1))
    tie = resumed / "epoch08-bleu4_0.4000-v1.ckpt"
    tie.write_bytes(b"x")
    assert best_checkpoint([best_now, tie]) == tie  # the newest on a tie


def test_a_score_tie_goes_to_the_later_epoch_whatever_the_files_ages(tmp_path):
    """BLEU-4 0.0000 at every epoch of a short run: the later epoch, although a copy made its file the older."""
    run = tmp_path / "run"
    first, resumed = run / "logs" / "version_0" / "checkpoints", run / "logs" / "version_1" / "checkpoints"
    early, late = first / "epoch00-bleu4_0.0000.ckpt", resumed / "epoch03-bleu4_0.0000.ckpt"
    for f in (early, late):
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x")
    os.utime(late, (1, 1))  # older than epoch 0's file (copied without its times)
    assert best_checkpoint([early, late]) == late
    assert best_of_run(run, early) == late
    assert find_checkpoint(run) == late
    (resumed / "epoch04-bleu4_0.0001.ckpt").write_bytes(b"x")  # the score still comes first
    os.utime(resumed / "epoch04-bleu4_0.0001.ckpt", (0, 0))
    assert find_checkpoint(run) == resumed / "epoch04-bleu4_0.0001.ckpt"


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    torch.save({"rng_states": collect_rng_states()}, tmp_path / "state.ckpt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    set_rng_states(torch.load(tmp_path / "state.ckpt", weights_only=True)["rng_states"])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_next_hpc_checkpoint_of_the_run_folder(tmp_path):
    """The preemption checkpoint's name (captioner.preemption; saving it is tested in test_preemption.py)."""
    assert next_hpc_checkpoint(tmp_path / "missing") == str(tmp_path / "missing" / "hpc_ckpt_1.ckpt")
    (tmp_path / "hpc_ckpt_2.ckpt").write_bytes(b"x")
    (tmp_path / ".hpc_ckpt-3.ckpt.77.tmp").write_bytes(b"x")  # a temporary file never counts
    assert next_hpc_checkpoint(tmp_path) == str(tmp_path / "hpc_ckpt_3.ckpt")


# Foreign or tampered checkpoints; resuming never runs a file's code (moved from test_robustness.py)


def test_foreign_and_tampered_checkpoints_are_clear_errors(trained, tmp_path):
    import torchvision

    best = trained[2]
    cases = {}
    foreign = tmp_path / "resnet18.pth"  # another program's weights
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), foreign)
    cases[foreign] = "not a captioner checkpoint"
    tensor = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), tensor)
    cases[tensor] = "not a captioner checkpoint"
    cut = tmp_path / "truncated.ckpt"
    cut.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    cases[cut] = "not a loadable checkpoint"
    ckpt = torch.load(best, weights_only=True)
    more_words = tmp_path / "more_words.ckpt"  # a vocabulary edited after training: it no longer fits the weights
    torch.save({**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"],
                                             "vocab": ckpt["hyper_parameters"]["vocab"] + ["extra"]}}, more_words)
    cases[more_words] = "weights do not match the model it describes"
    no_specials = tmp_path / "no_specials.ckpt"
    torch.save({**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"],
                                             "vocab": ckpt["hyper_parameters"]["vocab"][4:]}}, no_specials)
    cases[no_specials] = "inconsistent captioner checkpoint (ValueError: a vocabulary must start with"
    bad_spec = tmp_path / "bad_spec.ckpt"
    torch.save({**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], "feature_spec": {"layers": 3}}}, bad_spec)
    cases[bad_spec] = "inconsistent captioner checkpoint (TypeError"
    for path, reason in cases.items():
        with pytest.raises(CheckpointError) as err:
            VideoCaptioner.from_checkpoint(path)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and reason in message and "\n" not in message, message
    VideoCaptioner.from_checkpoint(best)  # and the untouched file still loads


class _WritesAFile:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_resuming_from_a_checkpoint_never_runs_its_code(tiny_datamodule_args, tmp_path, capsys):
    from conftest import tiny_args

    from captioner.cli.train import train_main

    marker, evil = tmp_path / "code_ran", tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "payload": _WritesAFile(marker)}, evil)
    with pytest.raises(SystemExit) as exit_info:  # refused, in one line, before training starts
        train_main(tiny_args(tiny_datamodule_args, tmp_path / "run", "--trainer.max_epochs=1",
                             f"--ckpt_path={evil}"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"captioner train: error: --ckpt_path {evil}: not a loadable checkpoint (" in err
    assert "safe load refuses" in err and "Traceback" not in err
    assert not marker.exists()



# Atomic writes: a process killed between writing and renaming leaves the previous file, whole


class _Killed(BaseException):
    """Stands for SIGKILL arriving between the write and the rename (BaseException: nothing catches it)."""


def test_writers_leave_the_old_file_whole_when_killed_before_the_rename(tmp_path, monkeypatch):
    from captioner.callbacks import AtomicCheckpointIO
    from captioner.features.extract import remove_stale_temp_files
    from captioner.io import write_json_atomic

    cache = FeatureCache(tmp_path / "features", SPEC)
    cache.save("clip", torch.ones(4, 8))
    write_json_atomic(tmp_path / "annotations.json", {"videos": ["old"]})
    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")

    def killed(*args):
        raise _Killed

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(_Killed):
        cache.save("clip", torch.zeros(4, 8))
    with pytest.raises(_Killed):
        write_json_atomic(tmp_path / "annotations.json", {"videos": ["new"]})
    with pytest.raises(_Killed):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "last.ckpt")
    monkeypatch.undo()
    assert cache.load("clip").eq(1).all()
    assert json.loads((tmp_path / "annotations.json").read_text()) == {"videos": ["old"]}
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"step": 1}
    # the temporary feature file of the killed write is cleared by the next extraction
    assert remove_stale_temp_files(cache) == 1 and [p.name for p in cache.dir.iterdir()] == ["clip.npy"]


def test_checkpoint_writer_clears_the_temporary_file_of_a_killed_write(tmp_path):
    from captioner.callbacks import AtomicCheckpointIO

    (tmp_path / ".last.ckpt.4242.tmp").write_bytes(b"half a checkpoint")  # what SIGKILL mid-write leaves
    (tmp_path / ".best.ckpt.4242.tmp").write_bytes(b"another file's")
    AtomicCheckpointIO().save_checkpoint({"step": 3}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.ckpt.4242.tmp", "last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"step": 3}


def test_a_save_killed_under_slurm_leaves_the_resume_point_intact(tmp_path, monkeypatch):
    """A job killed while saving `hpc_ckpt_2.ckpt` leaves a temporary file; its name must not look like a
    checkpoint number to Lightning (which reads the digits of any name holding `ckpt_`), or the requeued job
    would resume from a file that does not exist. The next SIGTERM save still counts from the real ones."""
    from captioner.callbacks import AtomicCheckpointIO, next_hpc_checkpoint

    assert next_hpc_checkpoint(tmp_path / "nothing yet") == str(tmp_path / "nothing yet" / "hpc_ckpt_1.ckpt")
    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "hpc_ckpt_1.ckpt")
    written = []

    def killed(src, dst):
        written.append(Path(src))
        raise _Killed

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(_Killed):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "hpc_ckpt_2.ckpt")
    monkeypatch.undo()
    [temp] = written
    assert temp.parent == tmp_path and "ckpt_" not in temp.name
    temp.write_bytes(b"half a checkpoint")  # a real SIGKILL leaves it (no `finally` runs)
    assert next_hpc_checkpoint(tmp_path) == str(tmp_path / "hpc_ckpt_2.ckpt")
    AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "hpc_ckpt_2.ckpt")  # the retry clears it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt"]
    (tmp_path / "hpc_ckpt_10.ckpt").write_bytes(b"")
    assert next_hpc_checkpoint(tmp_path) == str(tmp_path / "hpc_ckpt_11.ckpt")


def test_training_writes_checkpoints_atomically(tmp_path):
    from captioner.callbacks import AtomicCheckpointIO
    from captioner.cli.train import build_cli

    cli = build_cli([f"--trainer.default_root_dir={tmp_path}"])
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
