"""`captioner train` (and `python scripts/train.py`): LightningCLI, then the test of the best checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "synthetic.yaml"
DEFAULT_MODEL = "captioner.systems.captioning.CaptioningSystem"
DEFAULT_DATA = "captioner.data.datamodule.CaptioningDataModule"


def build_cli(args: Optional[list[str]] = None):
    """Parse `args` (default: sys.argv) into a LightningCLI with model, data and trainer instantiated.

    Model and data are given by class path, so the same entry point trains the captioner and the
    sequence tasks. With no `--config`, the embedded default (`configs/synthetic.yaml`) is used.
    """
    from pytorch_lightning import LightningDataModule, LightningModule
    from pytorch_lightning.cli import LightningCLI

    from captioner.cli.data_flags import config_paths, renamed_config_key, renamed_data_flag, spell_feature_nulls
    from captioner.errors import SettingsError

    args = list(sys.argv[1:] if args is None else args)
    if not config_paths(args, given=True) and DEFAULT_CONFIG.exists():
        args = ["--config", str(DEFAULT_CONFIG)] + args

    renamed = renamed_data_flag(args) or renamed_config_key(args)
    if renamed:  # LightningCLI's own message names the option, not the new one
        raise SettingsError(renamed)
    args = spell_feature_nulls(args)

    class CaptionerCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            if not DEFAULT_CONFIG.exists():
                # Installed without configs/: the classes' defaults are the embedded synthetic job. Only then, since
                # jsonargparse carries a default's init_args over to another class_path that shares their names.
                parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}, "data": {"class_path": DEFAULT_DATA}})
            parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                                help="Resume training from this checkpoint (e.g. .../checkpoints/last.ckpt).")

    with warnings.catch_warnings():
        # sys.argv (plus the default config) is passed as `args` on purpose; Lightning warns about that mix
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = CaptionerCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            auto_configure_optimizers=False,  # the system configures its own optimizer and schedule
            args=args,
            run=False,
        )
    if cli.config.trainer.get("logger") in (None, True):
        cli.trainer.loggers = default_loggers(cli.trainer.default_root_dir)
    from captioner.callbacks import use_atomic_checkpoints
    from captioner.preemption import PreemptionCheckpoint

    use_atomic_checkpoints(cli.trainer)  # a job killed while saving keeps its previous last.ckpt
    # SIGUSR1/SIGTERM: every rank saves one hpc_ckpt_<n>.ckpt at a batch boundary and stops (SLURM: requeued)
    cli.trainer.callbacks.insert(0, PreemptionCheckpoint())
    return cli


def default_loggers(root: str) -> list:
    """CSV (metrics.csv, easy to read) and TensorBoard logs under `root`; checkpoints go beside the CSV logs."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    csv = CSVLogger(root, name="logs")
    return [csv, TensorBoardLogger(root, name="logs", version=csv.version, sub_dir="tensorboard")]


def exit_on_user_error(func):
    """Run `func`; on the project's own `UserError` (a setting, a missing file or download), print its one line on
    stderr and exit with status 2 instead of a traceback. Any other error keeps its traceback."""

    from captioner.errors import user_error_in

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as err:
            user = user_error_in(err)
            if user is None:
                raise
            print(f"captioner train: error: {user}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper


LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric")


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip")


def drop_lightning_tips() -> None:
    """Leave out Lightning's advertising lines ("Tip: ... try installing litlogger") for the rest of the process:
    this project chooses its own loggers and checkpoints. Also its `isinstance(treespec, LeafSpec) is deprecated`
    warning, printed on every run by Lightning's own code with torch >= 2.10: nothing a user can act on."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    for name in LIGHTNING_LOGGERS:
        tips = logging.getLogger(f"{name}.utilities.rank_zero")  # where Lightning's rank_zero_info lines come from
        if not any(isinstance(f, _NoTips) for f in tips.filters):
            tips.addFilter(_NoTips())


@contextlib.contextmanager
def startup_logs_held(names=LIGHTNING_LOGGERS):
    """Hold Lightning's start-up lines ("Seed set to 0", "GPU available ...") until `release()` is called.

    A bad setting found before training (a missing dataset, a checkpoint trained with other settings) is then the
    only line the user sees; once the checks pass, the held lines are printed as Lightning would have, in order.
    Any error that is not the user's prints the held lines before its traceback.
    """
    import pytorch_lightning  # noqa: F401  (on import it gives its loggers their handlers: before they are held)

    from captioner.errors import user_error_in

    held: list[logging.LogRecord] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    hold = Hold()
    for lg in loggers:
        lg.handlers, lg.propagate = [hold], False

    def restore() -> None:
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate

    def release() -> None:
        restore()
        for record in held:
            logging.getLogger(record.name).handle(record)
        held.clear()

    try:
        yield release
    except Exception as err:
        if user_error_in(err) is None:
            release()
        raise
    finally:
        restore()


DATA_HPARAMS = ("min_word_count",)  # besides the feature spec: the vocabulary depends on it
_LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


def check_resume_settings(ckpt_path: Optional[str], model, data) -> None:
    """Before fit (and any feature extraction): refuse to resume from `ckpt_path` with other data or model settings.

    Compares the feature spec, the dataset folder's name, `DATA_HPARAMS` and the system's `ARCHITECTURE` (the model
    settings that shape its weights; the others, lr, beam_size, dropout, ..., may change on a resume) with the
    checkpoint's; only its hyperparameters are read (safely: `weights_only`, memory-mapped).

    Raises:
        SettingsError: one line naming each setting that differs, the checkpoint's value and the one given.
        DataNotFoundError: `ckpt_path` does not exist.
    """
    from captioner.checkpointing import CheckpointError, load_safely
    from captioner.config import FeatureSpec
    from captioner.errors import DataNotFoundError, SettingsError

    if not ckpt_path or ckpt_path in _LIGHTNING_CKPT_NAMES or str(ckpt_path).startswith("registry:"):
        return
    if not os.path.isfile(ckpt_path):
        raise DataNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    try:
        # memory-mapped: only the hyperparameters are read here, the weights once, by Lightning's own load
        ckpt = load_safely(ckpt_path, mmap=True)
    except CheckpointError as err:  # not a checkpoint, or one asking to run code (which the safe load refuses)
        raise SettingsError(f"--ckpt_path {err}") from None
    differs: list[str] = []

    def compare(name: str, was, now) -> None:
        if was != now:
            differs.append(f"{name} {was} (now {now})")

    ckpt = ckpt if isinstance(ckpt, dict) else {}
    hp, data_hp = ckpt.get("hyper_parameters") or {}, ckpt.get("datamodule_hyper_parameters") or {}
    spec = getattr(data, "spec", None)
    if isinstance(hp.get("feature_spec"), dict) and isinstance(spec, FeatureSpec):
        try:
            stored = FeatureSpec.from_dict(hp["feature_spec"])
        except (TypeError, ValueError):
            stored = None  # a spec this version cannot read: loading the checkpoint will say so
        if stored is not None:
            for field in dataclasses.fields(FeatureSpec):
                compare(f"data.features.{field.name}", getattr(stored, field.name), getattr(spec, field.name))
    data_now = dict(getattr(data, "hparams", {}) or {})
    if data_hp.get("data_dir") and data_now.get("data_dir"):
        compare("data.data_dir", Path(data_hp["data_dir"]).name, Path(data_now["data_dir"]).name)  # moving is fine
    for name in DATA_HPARAMS:
        if name in data_hp and name in data_now:
            compare(f"data.{name}", data_hp[name], data_now[name])
    model_now = dict(getattr(model, "hparams", {}) or {})
    for name in getattr(model, "ARCHITECTURE", ()):
        if name in hp and name in model_now:
            compare(f"model.{name}", hp[name], model_now[name])
    if differs:
        raise SettingsError(f"--ckpt_path {ckpt_path} was trained with other settings: {', '.join(differs)}; resume "
                            f"with the checkpoint's settings, or start a new run without --ckpt_path")


@exit_on_user_error
def train_main(args: Optional[list[str]] = None) -> dict:
    """Train, then test the best checkpoint; write its test metrics as JSON beside it.

    A bad setting, a missing dataset, unavailable backbone weights or a checkpoint trained with other settings is
    one line on stderr and `SystemExit(2)`, before any work (see `exit_on_user_error`). SIGUSR1 or SIGTERM save
    `hpc_ckpt_<n>.ckpt` and stop every rank with status 138 or 143 (`captioner.preemption.PreemptionCheckpoint`).

    Returns:
        The test metrics (floats), also written to `<this fit's checkpoint dir>/test_metrics.json`. A resumed run
        tests the best checkpoint of the whole run (`best_of_run`), which may lie in an earlier version folder.
    """
    from captioner.io import write_text_atomic

    drop_lightning_tips()
    with startup_logs_held() as release:
        cli = build_cli(args)
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        if hasattr(data, "check_ready"):
            data.check_ready()  # before DDP starts its processes: a missing dataset is one line, not one per process
        check_resume_settings(cli.config.get("ckpt_path"), model, data)
        release()
    # weights_only: resuming from a checkpoint never runs code from it, whatever torch's default. SIGUSR1 or
    # SIGTERM end it with `captioner.preemption.Preempted`, a SystemExit (status 128 + the signal's number)
    trainer.fit(model, datamodule=data, ckpt_path=cli.config.get("ckpt_path"), weights_only=True)
    ckpt_cb = trainer.checkpoint_callback
    best = fit_best = ckpt_cb.best_model_path if ckpt_cb is not None else ""
    if best and trainer.ckpt_path:  # resumed: the run's earlier version folders keep their own best checkpoints
        from captioner.checkpointing import best_of_run

        best = str(best_of_run(trainer.default_root_dir, best))
        if trainer.is_global_zero and Path(best).resolve() != Path(fit_best).resolve():
            print(f"Testing the run's best checkpoint, {best} (this resumed fit's best: {fit_best})", flush=True)
    results = trainer.test(model, datamodule=data, ckpt_path=best or None, weights_only=True)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if trainer.is_global_zero:
        # this fit's own folder, even when the run's best is in an earlier version folder: that one keeps its own
        out_dir = Path(fit_best).parent if fit_best else Path(trainer.log_dir or trainer.default_root_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = out_dir / "test_metrics.json"
        clean = {k.split("/", 1)[-1] if k.startswith("test/") else k: v for k, v in metrics.items()}
        write_text_atomic(metrics_path, json.dumps(clean, indent=2) + "\n")
        print(f"\nBest checkpoint: {best or '(none saved)'}")
        print(f"Test metrics:    {metrics_path}")
        print(json.dumps(clean, indent=2))
    return metrics


def main(argv: Optional[list[str]] = None) -> int:
    """`captioner train ...`: exit status 0 once trained and tested (2 for a bad setting, see `train_main`)."""
    train_main(argv)
    return 0
