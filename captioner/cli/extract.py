"""`captioner extract`: cache the CNN features of a dataset's clips (1 CPU to N GPUs / nodes)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Union

from captioner.errors import UserError

DATAMODULE = "captioner.data.datamodule.CaptioningDataModule"
# the other sections of a training config: read past, so that `--config` takes the training config itself
TRAINING_ONLY = ("seed_everything", "trainer", "model", "ckpt_path", "optimizer", "lr_scheduler")
SPLITS = ("train", "val", "test")


def build_parser():
    """The `data` options are `CaptioningDataModule`'s own signature (as training's `LightningCLI` reads it: the
    same flags, YAML, defaults and help), plus the options of the run."""
    from captioner.cli.parsing import command_parser
    from captioner.data.datamodule import CaptioningDataModule

    parser = command_parser(
        "captioner extract", config_flags=("-c", "--config"),
        config_help="a training config, e.g. configs/msvd.yaml: its data section is read (the others are ignored); "
                    "repeatable, later files and flags win",
        description="Cache the CNN features of every clip in <data.data_dir>/annotations.json, with Lightning's "
                    "predict loop: 1 CPU, 1 GPU, N GPUs (DDP) or N nodes with the same command. Clips already cached "
                    "are skipped; unreadable clips are listed in <cache>/failed.txt and the run goes on. The cache is "
                    "exactly the one training reads: <data.features_dir>/<data_dir name>/<data.features key>/. The "
                    "data options are training's: a training config (--config, its data section) and the same "
                    "--data.* flags, e.g. --data.features.num_frames 16 (all of them: --data.help "
                    "CaptioningDataModule).")
    parser.add_subclass_arguments(CaptioningDataModule, "data", required=False, default={"class_path": DATAMODULE},
                                  help="the data settings, as in training (only those of the features matter here)")
    for key in TRAINING_ONLY:
        parser.add_argument(f"--{key}", type=Optional[Any], help=argparse.SUPPRESS)
    parser.add_argument("--split", action="append", type=str,  # jsonargparse checks choices against the list
                        help=f"only clips of this split ({', '.join(SPLITS)}); repeatable (default: every clip)")
    h = parser.add_argument_group("how to run it")
    h.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    h.add_argument("--devices", type=Union[int, str], default=1,
                   help="processes (GPUs) per node, or auto for all visible GPUs")
    h.add_argument("--num-nodes", type=int, default=1, help="nodes; on SLURM start with srun")
    h.add_argument("--strategy", default="auto", help="Lightning strategy; auto = ddp when more than one process")
    h.add_argument("--precision", default="auto",
                   help="Lightning's precision: auto = 16-mixed on GPU, 32-true on CPU; or any Lightning precision such "
                        "as bf16-mixed. A feature spec with --data.features.precision bf16 (auto's choice on a CPU "
                        "with native bf16) runs its CNN in bf16 whatever this says")
    h.add_argument("--batch-size", type=int, default=16, help="clips per CNN batch, per process")
    h.add_argument("--num-workers", type=int, default=4, help="DataLoader workers decoding video, per process")
    h.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def parse(argv: list[str]):
    """`argv` -> `(CaptioningDataModule, run options)`.

    Raises:
        UserError: a bad setting, in one line (jsonargparse's own errors included).
    """
    from jsonargparse import ArgumentError

    from captioner.cli.data_flags import renamed_config_key, renamed_data_flag, spell_feature_nulls
    from captioner.cli.parsing import one_line
    from captioner.errors import SettingsError, user_error_in

    parser = build_parser()
    try:
        cfg = parser.parse_args(spell_feature_nulls(argv))
        data = parser.instantiate(cfg).data
    except (ArgumentError, ValueError, TypeError) as err:
        user = user_error_in(err)
        if user is not None:
            raise user from None
        raise SettingsError(renamed_data_flag(argv) or renamed_config_key(argv) or one_line(err, parser)) from None
    for split in cfg.split or ():
        if split not in SPLITS:
            raise SettingsError(f"--split {split}: a split is one of {', '.join(SPLITS)}")
    return data, cfg


def main(argv: Optional[list[str]] = None) -> int:
    """`captioner extract ...`; returns 0 when every readable clip is cached (unreadable ones are reported), 2 for a
    bad setting (one line on stderr)."""
    from pytorch_lightning.utilities import rank_zero_only

    from captioner.cli.train import drop_lightning_tips
    from captioner.data.datasets import load_annotations
    from captioner.features.extract import run_extraction

    drop_lightning_tips()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        data, args = parse(argv)
    except UserError as err:
        print(f"captioner extract: {err}", file=sys.stderr)
        return 2
    spec, cache = data.spec, data.cache  # the DataModule's own cache layout
    try:
        clips = load_annotations(data.annotations_path)
    except (OSError, ValueError) as err:
        print(f"captioner extract: {err}", file=sys.stderr)
        return 1
    if args.split:
        clips = [c for c in clips if c.split in args.split]
    items = [(c.id, c.path) for c in clips]
    todo = sum(not cache.has(vid) for vid, _ in items)
    say = rank_zero_only(print)
    say(f"{len(items)} clips, {len(items) - todo} already cached in {cache.dir}, {todo} to extract")
    if not todo:
        return 0
    try:
        data.ensure_weights()  # before Lightning starts and any video is read: no download, no work
    except UserError as err:
        print(f"captioner extract: {err}", file=sys.stderr)
        return 2
    failures = run_extraction(spec, items, cache, accelerator=args.accelerator, devices=args.devices,
                              num_nodes=args.num_nodes, strategy=args.strategy, precision=args.precision,
                              batch_size=args.batch_size, num_workers=args.num_workers, progress=not args.no_progress)
    if failures is not None:  # global rank 0
        done = sum(cache.has(vid) for vid, _ in items)
        print(f"{done}/{len(items)} clips cached in {cache.dir}")
        if failures:
            print(f"{len(failures)} clips could not be read (listed in {cache.report_path}), first: "
                  f"{failures[0][0]}: {failures[0][1]}")
    return 0
