"""Finding a run's best checkpoint, reading checkpoint files safely, and the model they hold (no Lightning needed)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import torch

from captioner.config import CONFIG_KEY, CaptionerConfig, FeatureSpec, GenerationConfig
from captioner.models.captioner import CaptionModel
from captioner.models.familiarity import DomainSummary
from captioner.vocab import Vocabulary

Model = TypeVar("Model", bound=CaptionModel)


class CheckpointError(ValueError):
    """A file is missing or is not a captioner checkpoint."""


_SCORE = re.compile(r"(?:bleu4_|cider_|acc)(\d+\.\d+)(?:-v\d+)?\.ckpt$")  # the score in a best checkpoint's name
_EPOCH = re.compile(r"epoch(\d+)-")  # the epoch in a best checkpoint's name
_VERSION = re.compile(r"version_\d+")


def run_folder(checkpoint: str | os.PathLike) -> Path:
    """The run a checkpoint file belongs to: the Trainer's `default_root_dir`, above `<logger name>/version_<N>/`
    (`runs/synthetic` for `runs/synthetic/logs/version_1/checkpoints/last.ckpt`); the file's own folder when it
    lies in no version folder (a `ModelCheckpoint` given its own `dirpath`)."""
    checkpoint = Path(checkpoint)
    for folder in checkpoint.parents:
        if _VERSION.fullmatch(folder.name):
            return folder.parent.parent
    return checkpoint.parent


def best_checkpoint(files: Sequence[str | os.PathLike]) -> Path:
    """The best of `files`: the highest score in the name (`epoch18-bleu4_0.5616.ckpt`); on a tie the later epoch
    (`epoch03-bleu4_0.0000.ckpt` over `epoch00-bleu4_0.0000.ckpt`: a short run scores BLEU-4 0 at every epoch
    while it learns), then the newest file; the newest when no name has a score.

    The epoch in the name, not the file's age, decides a tie: copying a run folder (`cp`, `scp`) changes the ages.
    """

    def rank(f: Path) -> tuple:
        score, epoch = _SCORE.search(f.name), _EPOCH.match(f.name)
        return (float(score.group(1)) if score else float("-inf"), int(epoch.group(1)) if epoch else -1,
                f.stat().st_mtime, str(f))

    return max(map(Path, files), key=rank)


def best_of_run(run_dir: str | os.PathLike, current_best: str | os.PathLike) -> Path:
    """The best checkpoint of the run in `run_dir` (a Trainer's `default_root_dir`): `current_best` (this fit's)
    or the best `epoch*.ckpt` an earlier fit of the run kept in its own version folder, by `find_checkpoint`'s rule.

    A run resumed into a new version folder starts its `ModelCheckpoint` afresh there ("dirpath has changed"), so
    the callback's `best_model_path` is the best of the newest version folder only. Other runs' checkpoints
    (another `default_root_dir` beneath `run_dir`) are left out.
    """
    run_dir = Path(run_dir).resolve()
    earlier = [f for f in run_dir.rglob("epoch*.ckpt")
               if f.is_file() and _SCORE.search(f.name) and run_folder(f.resolve()) == run_dir]
    return best_checkpoint([Path(current_best), *earlier])


def find_checkpoint(path: str | os.PathLike) -> Path:
    """`path` itself when it is a file. For a folder (a run root such as `runs/synthetic`, a version folder, a
    `checkpoints/` folder), the best checkpoint beneath it: among the `epoch*.ckpt` files training keeps (one per
    run version, the best on the validation metric, whose score the name carries: `epoch18-bleu4_0.5616.ckpt`),
    the best by `best_checkpoint`'s rule (the highest score, then the later epoch); else the newest `last.ckpt`.
    A run resumed into a new version folder keeps a best checkpoint in each, so the highest score, not the newest
    file, is the run's best. Scores are compared within one run only: a folder above several runs (`runs/`, holding
    `runs/synthetic` and `runs/msvd`: other datasets, other test sets) is refused (see `run_folder`).

    Raises:
        CheckpointError: `path` does not exist, the folder holds no checkpoint, or checkpoints of several runs.
    """
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found")
        return path
    found = {pattern: [f for f in path.rglob(pattern) if f.is_file()] for pattern in ("epoch*.ckpt", "last.ckpt")}
    runs = sorted({run_folder(f) for files in found.values() for f in files})
    if len(runs) > 1:
        listed = ", ".join(map(str, runs[:5])) + (f" and {len(runs) - 5} more" if len(runs) > 5 else "")
        raise CheckpointError(f"{path}: holds the checkpoints of {len(runs)} runs ({listed}), whose scores are not "
                              "comparable: pass one run folder or a checkpoint file")
    for files in found.values():
        if files:
            return best_checkpoint(files)
    raise CheckpointError(f"{path}: no checkpoint in this folder (looked for epoch*.ckpt and last.ckpt beneath it)")


def _load_failure(err: Exception) -> str:
    """A one-line reason from `torch.load`'s error (its weights-only refusals span a paragraph)."""
    text = str(err).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:  # not a pickle at all, or one that asks to run code: keep only the refused item
        detail = text.split(marker, 1)[1].strip().splitlines()[0].split(". ")[0].rstrip(".")
        return f"not a PyTorch checkpoint, or one holding objects a safe load refuses: {detail}"
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


def load_safely(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """`torch.load(path)` with `weights_only=True`: no code in the file runs, whatever torch's default.

    `mmap`: map the file instead of reading it (where torch can: its zip format), for a caller that reads only the
    hyperparameters of a file whose weights are loaded elsewhere.

    Raises:
        CheckpointError: `<path>: not a loadable checkpoint (<one-line reason>)`.
    """
    import zipfile

    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as err:  # not a checkpoint, or one asking to run code (which the safe load refuses)
        raise CheckpointError(f"{path}: not a loadable checkpoint ({_load_failure(err)})") from None


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """A captioner checkpoint file's contents, loaded safely (`load_safely`) and checked to hold what a captioner
    is rebuilt from: `hyper_parameters` with the vocabulary and feature spec, and a `state_dict`.

    Raises:
        CheckpointError: the file is unreadable or not a captioner checkpoint.
    """
    ckpt = load_safely(path, map_location, mmap)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or not hp.get("vocab") or not hp.get("feature_spec") or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a captioner checkpoint (no vocabulary or feature spec inside)")
    if not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{path}: not a captioner checkpoint (its state_dict is not a dict)")
    return ckpt


def build_model(hp: Mapping[str, Any], config: CaptionerConfig, model_class: type[Model] = CaptionModel) -> Model:
    """A new model of the architecture `config` for flat hyperparameters `hp` (the training system's, or a
    checkpoint's `hyper_parameters`): their vocabulary, feature spec and generation settings, read here only."""
    return model_class.from_config(config, Vocabulary(hp["vocab"]), FeatureSpec.from_dict(hp["feature_spec"]),
                                   GenerationConfig.from_hparams(hp))


def load_model(ckpt: dict, path: str | os.PathLike, model_class: type[Model] = CaptionModel) -> Model:
    """The model in a checkpoint `read_checkpoint` read from `path`: its architecture (`CONFIG_KEY`), vocabulary,
    features and generation settings (`build_model`), weights, and the summary of its training videos.

    Raises:
        CheckpointError: the checkpoint is inconsistent, or its weights do not match the model it describes.
    """
    stored = ckpt.get(CONFIG_KEY)
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: not a captioner checkpoint of this version (no {CONFIG_KEY} inside)")
    try:
        model = build_model(ckpt["hyper_parameters"], CaptionerConfig(**stored), model_class)
    except (ValueError, TypeError, KeyError) as err:  # e.g. an edited vocabulary or feature spec
        raise CheckpointError(f"{path}: inconsistent captioner checkpoint ({type(err).__name__}: {err})") from None
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items()
             if isinstance(k, str) and k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        reason = " ".join(str(err).split())[:300]  # torch lists every mismatched tensor, over many lines
        raise CheckpointError(f"{path}: weights do not match the model it describes ({reason})") from None
    summary = ckpt.get("domain_summary")
    if isinstance(summary, dict) and torch.is_tensor(summary.get("prototypes")):
        model.domain = DomainSummary.from_dict(summary)
    return model
