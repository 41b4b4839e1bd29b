"""The floors hold: the import-linter contracts in pyproject.toml pass, every room is on a floor, and nothing the
contracts cannot see (the package's own __init__) pulls the upper floors into a lower one."""

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "captioner"
# what each floor may be imported without: importing one of these loads none of the rooms above it
GROUND = ("captioner.errors", "captioner.config", "captioner.video", "captioner.vocab", "captioner.io",
          "captioner.device")


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _layers() -> list[list[str]]:
    [floors] = [c for c in _contracts() if c["type"] == "layers"]
    return [[room.strip() for room in layer.split("|")] for layer in floors["layers"]]


def test_the_import_contracts_hold():
    """`lint-imports` (import-linter) reads every import, inside functions too; a broken contract fails here with
    the import chain it found."""
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports not found: pip install -e '.[dev]' (import-linter)")
    proc = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and " KEPT" in proc.stdout


def test_every_room_is_on_a_floor():
    """A module or folder added under captioner/ without a floor would escape the contract: each has one."""
    rooms = {f"captioner.{p.stem}" for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").is_file()}
    on_a_floor = {room for layer in _layers() for room in layer}
    assert rooms - on_a_floor == set(), "rooms on no floor of pyproject.toml's layers contract"
    assert on_a_floor - rooms == set(), "floors naming rooms that do not exist"


@pytest.mark.parametrize("module", [*GROUND, "captioner.models"])
def test_a_lower_floor_imports_without_the_upper_ones(module):
    """Python runs captioner/__init__.py before any room, out of the contracts' sight: it must import nothing above
    the room asked for (its exports load on first use)."""
    layers = _layers()
    floor = next(i for i, layer in enumerate(layers) if module in layer)
    above = [room for layer in layers[:floor] for room in layer]
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.splitlines()[-1])
    climbed = sorted(m for m in loaded if any(m == room or m.startswith(room + ".") for room in above))
    assert climbed == [], f"importing {module} loaded rooms above it: {climbed}"

