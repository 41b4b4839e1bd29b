"""Convert MSVD / MSR-VTT annotations: `python scripts/prepare_data.py {msvd,msrvtt} --root DIR` (see `--help`)."""
import sys

from captioner.cli.prepare import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
