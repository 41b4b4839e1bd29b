"""Caption video files: `python scripts/caption.py VIDEO [VIDEO ...] --checkpoint CKPT` (see `--help`)."""
import sys

from captioner.cli.caption import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
