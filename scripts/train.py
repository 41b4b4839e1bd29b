"""Train a model (default: the captioner on the embedded synthetic dataset), then test it (see `--help`)."""
import sys

from captioner.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
