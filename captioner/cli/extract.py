"""`captioner extract`: cache the CNN features of a dataset's clips (1 CPU to N GPUs / nodes)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
from pathlib import Path
from typing import Optional, Sequence

from captioner.errors import UserError
from captioner.features.cache import FeatureCache, FeatureSpec
from captioner.features.extract import run_extraction
from captioner.models.encoder import ensure_weights


_UNSET = object()  # "flag not given", distinct from an explicit null
SPEC_KEYS = tuple(f.name for f in dataclasses.fields(FeatureSpec))  # every setting that names the cache folder
DATA_KEYS = ("data_dir", "features_dir", *SPEC_KEYS)


def _datamodule_defaults() -> dict:
    """The CaptioningDataModule's own defaults, so an unconfigured extraction fills the cache training reads."""
    from captioner.data.datamodule import CaptioningDataModule

    params = inspect.signature(CaptioningDataModule.__init__).parameters
    return {k: params[k].default for k in DATA_KEYS}


def data_args_from_configs(paths: Sequence[str]) -> dict:
    """The `data` settings of training config files (later files win), as `CaptioningDataModule` reads them."""
    import yaml

    found: dict = {}
    for path in paths:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
        data = cfg.get("data") or {}
        data = data.get("init_args", data) if isinstance(data, dict) else {}
        found.update({k: data[k] for k in DATA_KEYS if k in data})
    return found


def _optional(text: str) -> Optional[str]:
    return None if text.lower() in ("null", "none", "") else text


def _optional_int(text: str) -> Optional[int]:
    return None if text.lower() in ("null", "none", "") else int(text)


def _devices(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    d = {k: "null" if v is None else v for k, v in _datamodule_defaults().items()}
    parser = argparse.ArgumentParser(
        prog="captioner extract",
        description="Cache the CNN features of every clip in <data-dir>/annotations.json, with Lightning's predict "
                    "loop: 1 CPU, 1 GPU, N GPUs (DDP) or N nodes with the same command. Clips already cached are "
                    "skipped; unreadable clips are listed in <cache>/failed.txt and the run goes on. The cache is "
                    "exactly the one training reads: <features-dir>/<data-dir name>/<backbone>-<weights>-<T>f[-<S>px]/."
                    " Data options come from --config files (training configs), then the flags, then the "
                    "CaptioningDataModule defaults.")
    g = parser.add_argument_group("what to extract (defaults: from --config, else the values shown)")
    g.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="training config(s) to read data.* from, e.g. configs/msvd.yaml; repeatable, later wins")
    g.add_argument("--data-dir", help=f"dataset folder with annotations.json (default: {d['data_dir']})")
    g.add_argument("--features-dir", help=f"root of the feature cache (default: {d['features_dir']})")
    g.add_argument("--backbone", help=f"CNN: efficientnet_lite0 or a torchvision model name (default: {d['backbone']})")
    g.add_argument("--weights", type=_optional,
                   help=f"torchvision weights enum name; null = random (default: {d['weights']})")
    g.add_argument("--num-frames", type=int, help=f"frames sampled per clip (default: {d['num_frames']})")
    g.add_argument("--image-size", type=_optional_int,
                   help=f"CNN input size; null = the weights' own (default: {d['image_size']})")
    g.add_argument("--spatial-grid", type=int,
                   help=f"pool the last feature map over a g x g grid (default: {d['spatial_grid']})")
    g.add_argument("--fast-seek", action=argparse.BooleanOptionalAction, default=None,
                   help="approximate frame sampling: each sample moves to the nearest keyframe, so only keyframes "
                        "are decoded (much faster on long videos; clips with fewer keyframes than frames are read "
                        "exactly). Cached in a folder of its own, <...>-keyframe/; --no-fast-seek: exact "
                        f"(default: data.seek from --config, else {d['seek']})")
    g.add_argument("--split", action="append", choices=("train", "val", "test"),
                   help="only clips of this split; repeatable (default: every clip)")
    h = parser.add_argument_group("how to run it")
    h.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default: %(default)s)")
    h.add_argument("--devices", type=_devices, default=1,
                   help="processes (GPUs) per node, or auto for all visible GPUs (default: %(default)s)")
    h.add_argument("--num-nodes", type=int, default=1, help="nodes; on SLURM start with srun (default: %(default)s)")
    h.add_argument("--strategy", default="auto",
                   help="Lightning strategy; auto = ddp when more than one process (default: %(default)s)")
    h.add_argument("--precision", default="auto",
                   help="auto = 16-mixed on GPU, 32-true on CPU; or any Lightning precision such as bf16-mixed "
                        "(default: %(default)s)")
    h.add_argument("--batch-size", type=int, default=16, help="clips per CNN batch, per process (default: %(default)s)")
    h.add_argument("--num-workers", type=int, default=4,
                   help="DataLoader workers decoding video, per process (default: %(default)s)")
    h.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    return parser


def resolve_data_args(args: argparse.Namespace) -> dict:
    """Flags over config files over the DataModule's defaults."""
    values = {**_datamodule_defaults(), **data_args_from_configs(args.config)}
    seek = None if args.fast_seek is None else ("keyframe" if args.fast_seek else "exact")
    flags = {"data_dir": args.data_dir, "features_dir": args.features_dir, "backbone": args.backbone,
             "num_frames": args.num_frames, "spatial_grid": args.spatial_grid, "seek": seek}
    values.update({k: v for k, v in flags.items() if v is not None})
    # weights and image size may be set to null on purpose: a flag given on the command line always wins
    values.update({k: getattr(args, k) for k in ("weights", "image_size") if getattr(args, k) is not _UNSET})
    return values


def main(argv: Optional[list[str]] = None) -> int:
    """`captioner extract ...`; returns 0 when every readable clip is cached (unreadable ones are reported)."""
    from captioner.data.datasets import load_annotations
    from pytorch_lightning.utilities import rank_zero_only

    parser = build_parser()
    parser.set_defaults(weights=_UNSET, image_size=_UNSET)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    data = resolve_data_args(args)
    try:
        spec = FeatureSpec(**{k: data[k] for k in SPEC_KEYS})
    except UserError as err:
        print(f"captioner extract: {err}", file=sys.stderr)
        return 2
    data_dir = Path(data["data_dir"])
    cache = FeatureCache(Path(data["features_dir"]) / data_dir.name, spec)  # the DataModule's layout
    try:
        clips = load_annotations(data_dir / "annotations.json")
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
        ensure_weights(spec.backbone, spec.weights)  # before any video is read: no download, no work
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
