"""Run every benchmark and print one table: absolute figures, ratios against their baseline or bound, targets.

    python benchmarks/run_all.py                   # the full versions on CPU (tens of minutes on 2 cores)
    python benchmarks/run_all.py --device cuda     # GPU figures where a benchmark has them
    python benchmarks/run_all.py --smoke           # tiny sizes: checks that every benchmark runs (CI does this)
    python benchmarks/run_all.py --only beam_search training --markdown

Each benchmark is also a script of its own with more options (`python benchmarks/<name>.py --help`).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import inspect
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import Row, format_table, machine_line  # noqa: E402

# (module, what it measures): the order of the list
BENCHMARKS = {
    "frame_sampling": "frame sampling from a long video: exact and keyframe seeking vs a full decode",
    "extraction": "feature extraction end to end vs the CNN alone",
    "training": "training throughput on cached features, share of time outside the model",
    "beam_search": "batched beam search vs one video at a time",
    "memory": "peak memory, 10-minute vs 10-second video",
    "caption_latency": "caption latency: warm, cold CLI start, folder throughput",
    "segments": "timed captions of a 10-minute 720p video in 10-s windows vs decoding its frames alone",
}


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_run(module, **options) -> list[Row]:
    """`module.run(...)` with the options its signature takes."""
    accepted = inspect.signature(module.run).parameters
    return module.run(**{k: v for k, v in options.items() if k in accepted})


def markdown(rows: list[Row]) -> str:
    lines = ["| measurement | result | ratio / target | notes |", "|---|---|---|---|"]
    lines += [f"| {r.measurement.strip()} | {r.result} | {r.ratio} | {r.notes} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, no targets checked: the benchmarks run")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for PyTorch (0: PyTorch's choice; 1 is steadier on a shared machine)")
    p.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None, help="run only these")
    p.add_argument("--markdown", action="store_true",
                   help="also print the table in Markdown (for benchmarks/README.md)")
    args = p.parse_args(argv)

    names = [n for n in BENCHMARKS if (HERE / f"{n}.py").is_file() and (args.only is None or n in args.only)]
    rows: list[Row] = []
    failed = []
    started = time.perf_counter()
    for name in names:
        print(f"[{name}] {BENCHMARKS[name]} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            got = call_run(load(name), smoke=args.smoke, threads=args.threads or None, device=args.device)
        except Exception as err:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            got = [Row(f"{name}: FAILED", type(err).__name__, "", str(err).splitlines()[0][:120] if str(err) else "")]
        rows.append(Row(f"[{name}] {BENCHMARKS[name]}", "", "", f"{time.perf_counter() - t0:.0f} s"))
        rows += got

    print(f"date:    {datetime.date.today().isoformat()}")
    print(f"machine: {machine_line(args.device)}")
    print(f"command: python benchmarks/run_all.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"total:   {time.perf_counter() - started:.0f} s{' (smoke: sizes too small for the targets)' if args.smoke else ''}\n")
    print(format_table(rows))
    if args.markdown:
        print("\n" + markdown(rows))
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
