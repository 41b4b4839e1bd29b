"""`captioner export`: write a trained checkpoint as a folder to share (safetensors, config.json, a model card)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

PROG = "captioner export"
EXIT_OK, EXIT_USAGE = 0, 2

DESCRIPTION = """\
Export a trained captioner to a self-contained folder, the one to share or upload to the Hugging Face Hub:
model.safetensors (decoder, temporal encoder and the frozen CNN: it captions offline), config.json
(features, model sizes, generation defaults, in-domain threshold, each file's SHA-256), vocab.json,
domain.safetensors (the training videos' prototypes) and README.md (a model card with the test metrics).
Load it with `captioner caption VIDEO --checkpoint OUT_DIR` or VideoCaptioner.from_pretrained(OUT_DIR).
Loading runs no code from the folder and refuses a missing or altered file.

Exit status: 0 written; 2 bad arguments, a bad checkpoint or an unusable destination."""

EPILOG = """\
examples:
  captioner export runs/synthetic exported/synthetic
  captioner export runs/msvd/logs/version_0/checkpoints/last.ckpt exported/msvd --onnx
  captioner export runs/msvd exported/msvd-light --no-backbone   # torchvision's weights named, not copied"""


def build_parser():
    from captioner.cli.parsing import command_parser

    p = command_parser(PROG, DESCRIPTION, EPILOG)
    p.add_argument("checkpoint", metavar="CKPT|RUN_DIR",
                   help="a checkpoint written by training (*.ckpt), or a run folder: its best checkpoint")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write (new, empty, or an earlier export)")
    p.add_argument("--onnx", action="store_true",
                   help="also write the encoder and the decoder step as ONNX graphs, for `captioner caption "
                        "--runtime onnx` (mean, lstm and gru temporal kinds; default: off)")
    p.add_argument("--no-backbone", action="store_true",
                   help="leave the frame CNN's weights out and name them (torchvision downloads them on first use) "
                        "instead: a smaller folder that needs the network once (default: off, weights included)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Run `captioner export` with `argv` (default: sys.argv[1:]); returns the exit status."""
    from captioner.cli.parsing import parse

    args = parse(build_parser(), argv)
    from captioner.checkpointing import CheckpointError
    from captioner.errors import UserError
    from captioner.export import CONFIG, export_checkpoint, read_config

    try:
        out = export_checkpoint(args.checkpoint, args.out_dir, include_backbone=not args.no_backbone,
                                onnx=args.onnx)
    except (CheckpointError, UserError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    files = read_config(out, verify=False)["files"]
    total = sum(record["bytes"] for record in files.values()) + (out / CONFIG).stat().st_size
    total += (out / "README.md").stat().st_size
    print(f"{PROG}: wrote {out} ({_size(total)})", file=sys.stderr)
    for name in sorted([*files, CONFIG, "README.md"]):
        print(f"  {name:22s} {_size((Path(out) / name).stat().st_size):>9s}", file=sys.stderr)
    print(out)
    return EXIT_OK


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
