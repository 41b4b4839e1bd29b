"""Caption a split and score it: `python scripts/evaluate.py --checkpoint CKPT --split test` (see `--help`)."""
import sys

from captioner.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
