"""Tests for SequenceSystem: configs, learning tasks 1-3 with each cell, gradient-norm logging, checkpoints."""

import csv
import inspect
import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import EarlyStopping

from captioner.sequence.model import SequenceModel
from captioner.sequence.tasks import SequenceDataModule, complete_word, predict_next_letter
from captioner.sequence.system import SequenceSystem

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "sequence").glob("*.yaml"))
CELLS = ["rnn", "gru", "lstm"]
WORDS = ["house", "list", "moon", "tree", "cat", "dog"]  # one word per first letter: every next letter is determined


# tiny recurrent nets gain nothing from intra-op threads, and on a busy small CPU they lose a lot
pytestmark = pytest.mark.usefixtures("single_thread")


def system_for(dm: SequenceDataModule, **kwargs) -> SequenceSystem:
    return SequenceSystem(
        vocab_size=dm.vocab_size, num_classes=dm.num_classes, mode=dm.mode, padding_idx=dm.padding_idx, **kwargs
    )


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = dict(
        default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    return pl.Trainer(**{**defaults, **kwargs})


def fit_until(tmp_path, system, dm, max_epochs, threshold=0.99, **kwargs) -> float:
    """Train until val/acc reaches `threshold` (or max_epochs); return the last val/acc."""
    system.configure_callbacks = lambda: []  # no checkpoint files for these runs
    stop = EarlyStopping(monitor="val/acc", mode="max", stopping_threshold=threshold, patience=10**6)
    t = trainer(tmp_path, max_epochs=max_epochs, callbacks=[stop], **kwargs)
    t.fit(system, datamodule=dm)
    return float(t.callback_metrics["val/acc"])


def signature_defaults(*classes) -> dict:
    """The named arguments with defaults of `classes`' __init__s (a keyword catch-all left out), first class first."""
    return {
        k: p.default for cls in classes for k, p in inspect.signature(cls.__init__).parameters.items()
        if k != "self" and p.kind is not p.VAR_KEYWORD and p.default is not p.empty
    }  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_model_matches_data(config, tmp_path):
    from captioner.cli.train import build_cli

    cli = build_cli(["--config", str(config), "--trainer.default_root_dir", str(tmp_path)])
    model, data = cli.model, cli.datamodule
    assert isinstance(model, SequenceSystem) and isinstance(data, SequenceDataModule)
    assert (model.hparams.vocab_size, model.hparams.num_classes, model.hparams.mode) == (
        data.vocab_size, data.num_classes, data.mode,
    )  # fmt: skip
    assert model.hparams.padding_idx == data.padding_idx
    # Every argument the YAML leaves out must keep this class's own default (nothing inherited from the
    # CLI's default classes, which share argument names such as dropout and weight_decay).
    raw = yaml.safe_load(config.read_text())
    # SequenceSystem takes the model's settings through to SequenceModel, whose signature holds their defaults
    sections = (("model", model, (SequenceSystem, SequenceModel)), ("data", data, (SequenceDataModule,)))
    for section, obj, classes in sections:
        given = raw[section]["init_args"]
        for name, default in signature_defaults(*classes).items():
            expected = given.get(name, default)
            assert obj.hparams[name] == expected, f"{config.name}: {section}.{name}"
    assert str(cli.trainer.default_root_dir) == str(tmp_path)


def test_hyperparameters_state_every_model_setting():
    system = SequenceSystem(vocab_size=3, mode="many_to_one", hidden_dim=8, lr=0.1)
    model_defaults = signature_defaults(SequenceModel)
    assert set(system.hparams) == set(model_defaults) | {"vocab_size", "num_classes", "optimizer", "lr", "momentum",
                                                         "weight_decay"}
    assert system.hparams.cell == model_defaults["cell"] and system.hparams.hidden_dim == 8
    assert (system.model.mode, system.model.hidden_dim, system.model.vocab_size) == ("many_to_one", 8, 3)
    assert system.hparams_initial == system.hparams  # what the logger writes to hparams.yaml
    with pytest.raises(TypeError, match="cel"):
        SequenceSystem(cel="gru")  # a misspelt setting is refused, not ignored


def test_mismatched_model_and_data_are_caught(tmp_path):
    dm = SequenceDataModule(task="repetition", num_symbols=8, num_train=16, num_val=8, num_test=8)
    system = SequenceSystem(vocab_size=4, num_classes=2, mode="many_to_many")
    with pytest.raises(ValueError, match="vocab_size"):
        trainer(tmp_path, fast_dev_run=True).fit(system, datamodule=dm)


@pytest.mark.parametrize("cell", CELLS)
def test_each_cell_learns_repetition(cell, tmp_path):
    pl.seed_everything(0, verbose=False)
    dm = SequenceDataModule(task="repetition", seq_len=8, num_symbols=5, num_train=1024, num_val=256, batch_size=32)
    system = system_for(dm, cell=cell, embed_dim=16, hidden_dim=48, lr=1e-2)
    assert fit_until(tmp_path, system, dm, max_epochs=20) >= 0.97


@pytest.mark.parametrize("cell", CELLS)
def test_each_cell_learns_parity(cell, tmp_path):
    pl.seed_everything(0, verbose=False)
    dm = SequenceDataModule(task="parity", seq_len=5, num_train=256, num_val=128, batch_size=16)
    system = system_for(dm, cell=cell, embed_dim=8, hidden_dim=32, lr=1e-2)
    assert fit_until(tmp_path, system, dm, max_epochs=40) >= 0.97


@pytest.mark.parametrize("cell", CELLS)
def test_each_cell_learns_to_count(cell, tmp_path):
    pl.seed_everything(0, verbose=False)
    dm = SequenceDataModule(task="count", seq_len=6, num_train=1024, num_val=256, batch_size=32)
    system = system_for(dm, cell=cell, embed_dim=8, hidden_dim=32, lr=1e-2)
    assert fit_until(tmp_path, system, dm, max_epochs=30) >= 0.97


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.slow
def test_each_cell_learns_next_letters_and_completes_words(cell, tmp_path):
    pl.seed_everything(0, verbose=False)
    dm = SequenceDataModule(task="next_letter", words=WORDS, batch_size=len(WORDS))
    system = system_for(dm, cell=cell, embed_dim=16, hidden_dim=32, lr=2e-2)
    assert fit_until(tmp_path, system, dm, max_epochs=300, threshold=1.0, check_val_every_n_epoch=10) == 1.0
    model = system.model.eval()
    assert predict_next_letter(model, "hous") == "e"
    assert predict_next_letter(model, "lis") == "t"
    assert predict_next_letter(model, "house") == ""  # the word ends here
    assert complete_word(model, "hou") == "house"
    assert complete_word(model, "mo") == "moon"


@pytest.mark.parametrize("mode", ["many_to_many", "many_to_one"])
def test_bidirectional_system_trains(mode, tmp_path):
    task = "repetition" if mode == "many_to_many" else "parity"
    dm = SequenceDataModule(task=task, seq_len=6, num_train=32, num_val=16, num_test=16, batch_size=8)
    system = system_for(dm, cell="gru", hidden_dim=8, bidirectional=True, num_layers=2)
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    system.configure_callbacks = lambda: []
    t.fit(system, datamodule=dm)
    logits = system(dm.splits["val"].tensors[0][:3])
    assert logits.shape == ((3, 6, 2) if mode == "many_to_many" else (3, 2))
    assert math.isfinite(float(t.callback_metrics["val/acc"]))


@pytest.mark.slow
def test_only_a_bidirectional_model_detects_repeats_in_the_future(tmp_path):
    pl.seed_everything(0, verbose=False)
    dm = SequenceDataModule(
        task="repetition", repeat_scope="anywhere", seq_len=8, num_symbols=5, num_train=1024, num_val=256
    )
    accs = {}
    for bidirectional in (False, True):
        system = system_for(dm, cell="gru", embed_dim=16, hidden_dim=32, lr=1e-2, bidirectional=bidirectional)
        accs[bidirectional] = fit_until(tmp_path, system, dm, max_epochs=15)
    assert accs[True] >= 0.97
    assert accs[False] < 0.9  # a causal model cannot know whether the symbol comes again


def grad_norm_history(tmp_path, clip, steps, **system_kwargs):
    from pytorch_lightning.loggers import CSVLogger

    dm = SequenceDataModule(
        task="first_symbol", seq_len=15, num_symbols=4, num_distractors=4, num_train=256, num_val=32, num_test=32
    )
    system = system_for(dm, **system_kwargs)
    system.configure_callbacks = lambda: []
    logger = CSVLogger(tmp_path, name="clip" if clip else "noclip")
    t = trainer(
        tmp_path, max_steps=steps, logger=logger, log_every_n_steps=1, gradient_clip_val=clip, limit_val_batches=1
    )
    t.fit(system, datamodule=dm)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    raw = [float(r["train/grad_norm"]) for r in rows if r.get("train/grad_norm")]
    applied = [float(r["train/grad_norm_clipped"]) for r in rows if r.get("train/grad_norm_clipped")]
    return raw, applied


def test_gradient_norm_is_logged_every_step_and_clipping_bounds_it(tmp_path):
    pl.seed_everything(0, verbose=False)
    raw, applied = grad_norm_history(tmp_path, clip=0.05, steps=5, cell="lstm", hidden_dim=16)
    assert len(raw) == len(applied) == 5
    assert all(math.isfinite(n) and n > 0 for n in raw)
    for before, after in zip(raw, applied):
        assert after == pytest.approx(min(before, 0.05), rel=1e-3)  # clip_grad_norm_ rescales to the bound
    raw, applied = grad_norm_history(tmp_path, clip=None, steps=3, cell="lstm", hidden_dim=16)
    assert len(raw) == 3 and applied == []  # nothing clipped, nothing logged as clipped


def test_clipping_tames_exploding_gradients(tmp_path):
    # The exploding.yaml set-up: ReLU RNN, orthogonal W_hh x 2, plain SGD.
    kwargs = dict(
        cell="rnn", nonlinearity="relu", recurrent_gain=2.0, embed_dim=16, hidden_dim=64,
        optimizer="sgd", lr=0.05, momentum=0.9,
    )  # fmt: skip
    pl.seed_everything(0, verbose=False)
    raw, _ = grad_norm_history(tmp_path, clip=None, steps=8, **kwargs)
    assert any(not math.isfinite(n) or n > 1e4 for n in raw)  # explodes without clipping
    pl.seed_everything(0, verbose=False)
    raw, applied = grad_norm_history(tmp_path, clip=1.0, steps=8, **kwargs)
    assert max(raw) > 10  # the raw gradients are still large ...
    assert all(math.isfinite(n) for n in raw) and max(applied) <= 1.0 + 1e-4  # ... but every update is bounded


def test_checkpoint_round_trip(tmp_path):
    pl.seed_everything(0, verbose=False)
    dm = SequenceDataModule(task="parity", seq_len=5, num_train=64, num_val=32, num_test=32, batch_size=16)
    system = system_for(dm, cell="lstm", hidden_dim=8)
    t = trainer(tmp_path, max_epochs=1, enable_checkpointing=True)
    t.fit(system, datamodule=dm)
    ckpt = t.checkpoint_callback
    assert Path(ckpt.best_model_path).exists() and "/" not in Path(ckpt.best_model_path).name.replace(".ckpt", "")
    assert Path(ckpt.best_model_path).name.startswith("epoch000-acc")
    loaded = SequenceSystem.load_from_checkpoint(ckpt.best_model_path).eval()
    tokens = dm.splits["test"].tensors[0]
    assert torch.allclose(loaded(tokens), system.eval()(tokens))
    assert loaded.hparams.cell == "lstm" and loaded.hparams.hidden_dim == 8


def test_train_entry_point_writes_test_metrics(tmp_path):
    from captioner.cli.train import train_main

    config = next(c for c in CONFIGS if c.stem == "parity")
    metrics = train_main([
        "--config", str(config), "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--data.init_args.num_train", "64",
        "--data.init_args.num_val", "32", "--data.init_args.num_test", "32",
    ])  # fmt: skip
    assert 0.0 <= metrics["test/acc"] <= 1.0
    written = list(tmp_path.rglob("test_metrics.json"))
    assert len(written) == 1 and set(json.loads(written[0].read_text())) >= {"acc", "loss"}
