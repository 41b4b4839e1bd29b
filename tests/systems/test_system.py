"""The Lightning system end to end on the tiny dataset: train through the CLI, test, reload the checkpoint."""

import json
import pickle
from pathlib import Path

import pytest
import torch

from captioner import CheckpointError, VideoCaptioner
from captioner.data.datasets import load_annotations


def test_short_training_run_writes_checkpoints_metrics_and_config(trained):
    metrics, root, best = trained
    assert {"test/bleu1", "test/bleu2", "test/bleu3", "test/bleu4"} <= set(metrics)
    assert {"test/direction_acc", "test/dir_bleu4"} <= set(metrics)  # the synthetic set annotates motion
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k != "test/cider")
    assert 0.0 <= metrics["test/cider"] <= 10.0  # CIDEr-D is x10
    saved = json.loads((best.parent / "test_metrics.json").read_text())
    assert saved["bleu4"] == pytest.approx(metrics["test/bleu4"])
    assert saved["cider"] == pytest.approx(metrics["test/cider"])
    assert (best.parent / "last.ckpt").exists()
    assert list(root.rglob("config.yaml")) and list(root.rglob("metrics.csv"))
    assert list(root.rglob("events.out.tfevents*"))


def test_checkpoint_is_self_sufficient_and_round_trips(trained, tiny_datamodule_args, tiny_dataset):
    _, _, best = trained
    model = VideoCaptioner.from_checkpoint(best)
    ckpt = torch.load(best, weights_only=True)
    assert model.vocab.itos == ckpt["hyper_parameters"]["vocab"]
    clips = [c for c in load_annotations(tiny_dataset / "annotations.json") if c.split == "test"]
    from captioner.config import FeatureSpec
    from captioner.features.cache import FeatureCache

    # the checkpoint remembers which features it was trained on
    assert model.spec == FeatureSpec("resnet18", None, 4)
    from captioner.systems.captioning import CaptioningSystem

    system = CaptioningSystem.load_from_checkpoint(best, map_location="cpu").eval()
    cache = FeatureCache(Path(tiny_datamodule_args["features_dir"]) / tiny_dataset.name, model.spec)
    feats = torch.stack([cache.load(c.id) for c in clips])
    hp = system.hparams
    ids = system.model.generate(feats, beam_size=hp.beam_size, max_len=hp.max_len, length_penalty=hp.length_penalty).ids
    expected = [system.model.vocab.decode(r) for r in ids]
    assert model.caption_features(feats, beam_size=hp.beam_size) == expected
    # and from the video files: the same sampling and encoder as during extraction
    assert model.caption([c.path for c in clips], beam_size=hp.beam_size) == expected


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        VideoCaptioner.from_checkpoint(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        VideoCaptioner.from_checkpoint(junk)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointError, match="not a captioner checkpoint"):
        VideoCaptioner.from_checkpoint(other)


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).with_name("PWNED"),))


def test_loading_never_runs_code_from_the_checkpoint(tmp_path):
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _RunsCode()}))
    with pytest.raises(CheckpointError):
        VideoCaptioner.from_checkpoint(evil)
    assert not Path(__file__).with_name("PWNED").exists()


def test_a_users_own_checkpoint_callback_runs_beside_the_systems(tiny_datamodule_args, tmp_path):
    """`--trainer.callbacks ModelCheckpoint` with settings of its own is kept (Lightning would replace it with the
    system's from configure_callbacks); the system's best checkpoint is still the one tested."""
    from conftest import tiny_args

    from captioner.cli.train import train_main

    user_dir = tmp_path / "mine"
    train_main(tiny_args(tiny_datamodule_args, tmp_path / "run", "--trainer.max_epochs=2", "--model.num_samples=0",
                         "--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={user_dir}",
                         "--trainer.callbacks.filename=mine-{epoch}", "--trainer.callbacks.save_top_k=-1"))
    assert sorted(p.name for p in user_dir.iterdir()) == ["mine-epoch=0.ckpt", "mine-epoch=1.ckpt"]
    [best] = (tmp_path / "run").rglob("epoch*-bleu4_*.ckpt")
    assert (best.parent / "test_metrics.json").exists() and (best.parent / "last.ckpt").exists()


def test_with_user_checkpoints_keeps_only_the_users_own():
    from types import SimpleNamespace

    from pytorch_lightning.callbacks import Callback, ModelCheckpoint

    from captioner.callbacks import with_user_checkpoints

    class Subclass(ModelCheckpoint):  # a user's own kind of checkpoint: kept, once
        pass

    other, users, theirs = Callback(), ModelCheckpoint(monitor="val/loss"), Subclass(monitor="a")
    first = ModelCheckpoint(monitor="val/bleu4")
    trainer = SimpleNamespace(callbacks=[ModelCheckpoint(), other, users, theirs])  # + Lightning's default
    assert with_user_checkpoints(trainer, first) == [first, users, theirs]
    assert trainer.callbacks == [other]  # Lightning has no ModelCheckpoint of the trainer's left to replace
    trainer.callbacks = [other, first, users, theirs]  # after fit: the next call (test) makes new ones
    again = ModelCheckpoint(monitor="val/bleu4")
    assert with_user_checkpoints(trainer, again) == [again, users, theirs] and trainer.callbacks == [other]
    assert with_user_checkpoints(None, again) == [again]


def test_every_process_tests_with_the_same_checkpoint_callbacks():
    """Lightning replaces a trainer callback of a type `configure_callbacks` returns by the first superclass it meets
    in a set of types, an order that follows the types' ids and so differs between processes: at `test` after `fit`,
    the system's `BestCheckpoint` from `fit` was replaced in one DDP process and kept in another, whose extra
    `ModelCheckpoint.setup` broadcast hung both at the start of the test. Here every layout of that set (other
    callback types beside them) gives the same callbacks: the system's new ones and the user's, once."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback, ModelCheckpoint

    from captioner.systems.captioning import BestCheckpoint, CaptioningSystem

    for n in range(48):
        others = [type(f"Other{i}", (Callback,), {})() for i in range(n)]  # new types: new ids, new set layouts
        users = ModelCheckpoint(monitor="val/loss", filename="mine")
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[*others, users])
        system = CaptioningSystem()
        trainer.strategy.connect(system)
        system.trainer = trainer
        for stage in ("fit", "test"):
            trainer._callback_connector._attach_model_callbacks()  # as `trainer.fit`, then `trainer.test`, do
            checkpoints = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
            assert [type(cb) for cb in checkpoints] == [BestCheckpoint, ModelCheckpoint, ModelCheckpoint], (n, stage)
            assert checkpoints[2] is users and checkpoints[1].filename == "last", (n, stage)
            assert trainer.checkpoint_callback is checkpoints[0]
        assert all(cb in trainer.callbacks for cb in others)


def _lr_per_step(root: Path, version: int = 0) -> dict[int, float]:
    import csv

    rows = csv.DictReader((root / "logs" / f"version_{version}" / "metrics.csv").open())
    return {int(r["step"]): float(r["lr-AdamW"]) for r in rows if r.get("lr-AdamW")}


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.slow
def test_any_number_of_optimizer_steps_trains(tiny_datamodule_args, tmp_path, steps):
    """A smoke run of 1, 2 or 3 steps (OneCycleLR divided by zero at exactly 2) trains, validates and tests."""
    from conftest import tiny_args

    from captioner.cli.train import train_main

    root = tmp_path / "run"
    metrics = train_main(tiny_args(tiny_datamodule_args, root, f"--trainer.max_epochs={steps}",
                                   "--trainer.limit_train_batches=1", "--model.num_samples=0",
                                   "--trainer.log_every_n_steps=1", "--trainer.callbacks+=LearningRateMonitor"))
    assert "test/bleu4" in metrics
    last = torch.load(next(root.rglob("last.ckpt")), weights_only=True)
    assert last["global_step"] == steps
    lrs = _lr_per_step(root)
    assert sorted(lrs) == list(range(steps)) and lrs[0] < max(lrs.values()) or steps == 1  # warm-up, then more


@pytest.mark.slow
def test_resuming_with_more_epochs_follows_the_longer_schedule(tiny_datamodule_args, tmp_path):
    """Train 2 epochs, resume to 4 ("train 2 more"): the restored scheduler no longer stops the run at its old
    length, and the learning rate from the resumed step on is the one a 4-epoch run has there."""
    from conftest import tiny_args

    from captioner.cli.train import train_main

    def run(root: Path, *extra: str) -> None:
        train_main(tiny_args(tiny_datamodule_args, root, "--trainer.limit_train_batches=2", "--model.num_samples=0",
                             "--trainer.log_every_n_steps=1", "--trainer.callbacks+=LearningRateMonitor", *extra))

    run(tmp_path / "short", "--trainer.max_epochs=2")
    last = tmp_path / "short" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["lr_schedulers"][0]["total_steps"] == 4
    run(tmp_path / "short", "--trainer.max_epochs=4", f"--ckpt_path={last}")
    run(tmp_path / "long", "--trainer.max_epochs=4")
    resumed = torch.load(tmp_path / "short" / "logs" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 8 and resumed["epoch"] == 3
    assert resumed["lr_schedulers"][0]["total_steps"] == 8
    short, more = _lr_per_step(tmp_path / "short"), _lr_per_step(tmp_path / "short", 1)
    long = _lr_per_step(tmp_path / "long")
    assert sorted(more) == [4, 5, 6, 7]
    for step in more:
        assert more[step] == pytest.approx(long[step], rel=1e-12), step
    assert short[3] < more[4]  # the 2-epoch schedule had annealed; the 4-epoch one is half-way down


def test_init_from_hands_the_checkpoints_vocabulary_to_the_data_module(trained):
    """`--model.init_from` on data with another vocabulary: the weights' words, given to the data module through
    its own `use_vocabulary`."""
    from types import SimpleNamespace

    from captioner.systems.captioning import CaptioningSystem
    from captioner.vocab import Vocabulary

    _, root, best = trained
    ckpt = torch.load(best, weights_only=True)
    hp = ckpt["hyper_parameters"]
    taken = []
    data = SimpleNamespace(vocab=Vocabulary(hp["vocab"] + ["zebra"]), spec=VideoCaptioner.from_checkpoint(best).spec,
                           feature_dim=hp["feature_dim"], hparams={}, use_vocabulary=taken.append)
    system = CaptioningSystem(init_from=str(root), hidden_dim=hp["hidden_dim"] + 1)
    system._trainer = SimpleNamespace(datamodule=data)
    system.setup("fit")
    assert [v.itos for v in taken] == [hp["vocab"]] == [system.model.vocab.itos]
    assert system.hparams.hidden_dim == hp["hidden_dim"]  # the checkpoint's architecture replaces the one given


def test_dataset_scores_come_from_the_data_side():
    from captioner.data.synthetic import motion_scores

    hyps, refs = ["a red circle moves left", "a red circle moves up"], [["a red circle moves left"]] * 2
    scores = motion_scores(hyps, refs, [{"motion": "left"}, {"motion": "left"}])
    assert scores["direction_acc"] == 0.5 and "dir_bleu4" in scores
    assert motion_scores(hyps, refs, [{"motion": "left"}, {}]) == {}  # not the synthetic set: nothing added
    assert motion_scores([], [], []) == {}


def _scores_by_epoch(monkeypatch, cider_by_epoch: list[float]) -> None:
    """Validation scores BLEU-4 0 at every epoch (a short run on real data) and the given CIDEr-D."""
    from captioner.systems import captioning

    epoch = {"now": 0}
    original = captioning.CaptioningSystem.on_validation_epoch_end

    def on_validation_epoch_end(self):
        epoch["now"] = self.current_epoch
        original(self)

    monkeypatch.setattr(captioning.CaptioningSystem, "on_validation_epoch_end", on_validation_epoch_end)
    monkeypatch.setattr(captioning, "bleu_scores", lambda hyps, refs: {f"bleu{n}": 0.0 for n in range(1, 5)})
    monkeypatch.setattr(captioning, "cider_d", lambda hyps, refs: cider_by_epoch[epoch["now"]])


@pytest.mark.slow
def test_a_bleu4_tie_keeps_the_higher_cider_then_the_later_epoch_and_resumes_so(tiny_datamodule_args, tmp_path,
                                                                                 monkeypatch):
    """BLEU-4 0 at every epoch: the kept checkpoint is the one of the highest CIDEr-D (epoch 1 over 0 and 2), the
    later on a CIDEr-D tie too (3 over 1), not the first (Lightning keeps only a strictly better score). A run
    resumed after epoch 1 into a new version folder keeps the same, and a run folder resolves to it."""
    from conftest import tiny_args

    from captioner.checkpointing import find_checkpoint
    from captioner.cli.train import train_main

    _scores_by_epoch(monkeypatch, [0.011, 0.133, 0.05, 0.133])

    def run(root: Path, epochs: int, *extra: str) -> None:
        train_main(tiny_args(tiny_datamodule_args, root, f"--trainer.max_epochs={epochs}", "--model.num_samples=0",
                             "--trainer.limit_train_batches=1", "--model.beam_size=1", *extra))

    run(tmp_path / "whole", 4)
    [kept] = (tmp_path / "whole").rglob("epoch*.ckpt")
    assert kept.name == "epoch03-bleu4_0.0000.ckpt"
    state = next(v for k, v in torch.load(kept, weights_only=True)["callbacks"].items() if "val/bleu4" in k)
    assert state["best_tie_breaker"] == pytest.approx(0.133)

    run(tmp_path / "resumed", 2)
    first = tmp_path / "resumed" / "logs" / "version_0" / "checkpoints"
    assert [p.name for p in first.glob("epoch*.ckpt")] == ["epoch01-bleu4_0.0000.ckpt"]  # CIDEr-D 0.133 > 0.011
    run(tmp_path / "resumed", 4, f"--ckpt_path={first / 'last.ckpt'}")
    again = tmp_path / "resumed" / "logs" / "version_1" / "checkpoints"
    assert [p.name for p in again.glob("epoch*.ckpt")] == ["epoch03-bleu4_0.0000.ckpt"]  # epoch 2 (0.05) was not
    assert find_checkpoint(tmp_path / "resumed") == again / "epoch03-bleu4_0.0000.ckpt"


def test_the_best_checkpoint_callback_keeps_its_state_key_and_tie_breaker():
    """The tie-breaking callback restores from checkpoints a plain ModelCheckpoint wrote (runs saved before), and
    its tie-breaker round-trips through its state."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from captioner.systems.captioning import BestCheckpoint, CaptioningSystem

    [best, *_] = CaptioningSystem().configure_callbacks()
    assert isinstance(best, BestCheckpoint) and (best.monitor, best.tie_breaker) == ("val/bleu4", "val/cider")
    [by_cider, *_] = CaptioningSystem(monitor="val/cider").configure_callbacks()
    assert by_cider.tie_breaker == "val/bleu4"
    assert best.state_key == ModelCheckpoint(monitor="val/bleu4", mode="max").state_key
    best.best_tie_breaker = 0.5
    other = BestCheckpoint(monitor="val/bleu4", mode="max", tie_breaker="val/cider")
    other.load_state_dict(best.state_dict())
    assert other.best_tie_breaker == 0.5
    plain = ModelCheckpoint(monitor="val/bleu4", mode="max").state_dict()  # a checkpoint saved before
    other.load_state_dict(plain)
    assert other.best_tie_breaker is None  # unknown: a tie then keeps the later checkpoint
