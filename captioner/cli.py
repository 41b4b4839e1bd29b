"""Console entry points: `captioner train` (LightningCLI) and the `captioner` command group."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Optional

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "synthetic.yaml"
DEFAULT_MODEL = "captioner.systems.captioning.CaptioningSystem"
DEFAULT_DATA = "captioner.data.datamodule.CaptioningDataModule"


def _has_config(args: list[str]) -> bool:
    return any(a in ("--config", "-c") or a.startswith("--config=") for a in args)


def build_cli(args: Optional[list[str]] = None):
    """Parse `args` (default: sys.argv) into a LightningCLI with model, data and trainer instantiated.

    Model and data are given by class path, so the same entry point trains the captioner and the
    sequence tasks. With no `--config`, the embedded default (`configs/synthetic.yaml`) is used.
    """
    from pytorch_lightning import LightningDataModule, LightningModule
    from pytorch_lightning.cli import LightningCLI

    args = list(sys.argv[1:] if args is None else args)
    if not _has_config(args) and DEFAULT_CONFIG.exists():
        args = ["--config", str(DEFAULT_CONFIG)] + args

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
    from captioner.checkpointing import use_atomic_checkpoints

    use_atomic_checkpoints(cli.trainer)  # a job killed while saving keeps its previous last.ckpt
    return cli


def default_loggers(root: str) -> list:
    """CSV (metrics.csv, easy to read) and TensorBoard logs under `root`; checkpoints go beside the CSV logs."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    csv = CSVLogger(root, name="logs")
    return [csv, TensorBoardLogger(root, name="logs", version=csv.version, sub_dir="tensorboard")]


def train_main(args: Optional[list[str]] = None) -> dict:
    """Train, then test the best checkpoint; write its test metrics as JSON beside it.

    Returns:
        The test metrics (floats), also written to `<best checkpoint dir>/test_metrics.json`.
    """
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    cli = build_cli(args)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    try:
        # weights_only: resuming from a checkpoint never runs code from it, whatever torch's default
        trainer.fit(model, datamodule=data, ckpt_path=cli.config.get("ckpt_path"), weights_only=True)
    except SIGTERMException:  # stopped by SIGTERM after saving hpc_ckpt_<n>.ckpt: not a finished run
        raise SystemExit(143) from None  # 128 + SIGTERM, as if the signal had killed the process
    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb is not None else ""
    results = trainer.test(model, datamodule=data, ckpt_path=best or None, weights_only=True)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if trainer.is_global_zero:
        out_dir = Path(best).parent if best else Path(trainer.log_dir or trainer.default_root_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = out_dir / "test_metrics.json"
        clean = {k.split("/", 1)[-1] if k.startswith("test/") else k: v for k, v in metrics.items()}
        metrics_path.write_text(json.dumps(clean, indent=2) + "\n")
        print(f"\nBest checkpoint: {best or '(none saved)'}")
        print(f"Test metrics:    {metrics_path}")
        print(json.dumps(clean, indent=2))
    return metrics


# `captioner COMMAND ...`: name -> (one-line help, "module:function" taking the remaining arguments).
# Each function parses its own arguments (argparse or LightningCLI) and returns an exit status.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train a model, then test it (LightningCLI; see `captioner train --help`)", "captioner.cli:train_command"),
    "caption": ("caption video files or folders (`captioner caption --help`)", "captioner.caption_cli:caption_command"),
    "prepare": ("convert MSVD / MSR-VTT annotations to annotations.json (`captioner prepare --help`)",
                "captioner.data.prepare:main"),
    "extract": ("cache CNN features: 1 CPU to N GPUs / nodes (`captioner extract --help`)", "captioner.extract:main"),
    "evaluate": ("caption a split, score BLEU/METEOR/ROUGE-L/CIDEr (`captioner evaluate --help`)",
                 "captioner.evaluate:main"),
}


def train_command(argv: list[str]) -> int:
    train_main(argv)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """The `captioner` command: dispatch to a subcommand."""
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: captioner COMMAND [ARGS]\n\ncommands:")
        for name, (text, _) in COMMANDS.items():
            print(f"  {name:10s} {text}")
        print("\nRun `captioner COMMAND --help` for a command's options.")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"captioner: unknown command {cmd!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module, func = COMMANDS[cmd][1].split(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)
