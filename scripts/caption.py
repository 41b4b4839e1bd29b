"""Caption video files: `python scripts/caption.py VIDEO [VIDEO ...] --checkpoint CKPT` (see `--help`)."""
import sys

from captioner.caption_cli import caption_command

if __name__ == "__main__":
    raise SystemExit(caption_command(sys.argv[1:]))
