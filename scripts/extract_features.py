"""Cache CNN features of a dataset on 1 CPU to N GPUs / nodes: `python scripts/extract_features.py --config CFG`."""
import sys

from captioner.cli.extract import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
