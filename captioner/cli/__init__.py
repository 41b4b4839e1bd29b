"""The `captioner` command: one sub-command per module of this package, each `main(argv) -> exit status`."""

from __future__ import annotations

import os
import sys
from typing import Optional

# `captioner COMMAND ...`: name -> one-line help; the command is `captioner.cli.<name>.main(argv) -> exit status`,
# imported only when run (each parses its own arguments: LightningCLI for train, the others as
# captioner.cli.parsing says: jsonargparse, the parser LightningCLI is built on)
COMMANDS: dict[str, str] = {
    "train": "train a model, then test it (LightningCLI; see `captioner train --help`)",
    "caption": "caption video files or folders (`captioner caption --help`)",
    "prepare": "convert MSVD / MSR-VTT annotations to annotations.json (`captioner prepare --help`)",
    "extract": "cache CNN features: 1 CPU to N GPUs / nodes (`captioner extract --help`)",
    "evaluate": "caption a split, score BLEU/METEOR/ROUGE-L/CIDEr (`captioner evaluate --help`)",
    "export": "write a model as a folder to share: safetensors, config.json, model card (`captioner export --help`)",
    "info": "what a model holds: data, sizes, generation, test metrics, in-domain (`captioner info --help`)",
}


SIGPIPE_EXIT = 141  # what a shell reports for a command stopped by SIGPIPE: 128 + 13


def main(argv: Optional[list[str]] = None) -> int:
    """The `captioner` command: dispatch to a subcommand. A reader that leaves early (`captioner info X | head`)
    ends it quietly, exit status 141 as for any command stopped by SIGPIPE, instead of with a traceback."""
    try:
        code = _dispatch(argv)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not in the interpreter's exit
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush must not fail again
        return SIGPIPE_EXIT


def _dispatch(argv: Optional[list[str]]) -> int:
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: captioner COMMAND [ARGS]\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:10s} {text}")
        print("\nRun `captioner COMMAND --help` for a command's options.")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"captioner: unknown command {cmd!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"captioner.cli.{cmd}").main(rest) or 0)
