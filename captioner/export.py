"""An exported model folder: a trained captioner as safetensors weights, `config.json`, `vocab.json` and a model
card, written from a checkpoint and read back without running any code from it (no pickle)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Optional, TypeVar

import torch

from captioner.checkpointing import CheckpointError, find_checkpoint, load_model, read_checkpoint, run_folder
from captioner.config import CONFIG_KEY, CaptionerConfig, FeatureSpec, GenerationConfig
from captioner.errors import UserError
from captioner.io import atomic_path, write_text_atomic
from captioner.models.captioner import CaptionModel
from captioner.models.encoder import FrameEncoder, Preprocessing
from captioner.models.familiarity import DomainSummary
from captioner.onnx_export import ONNX_FILES, check_exportable
from captioner.vocab import Vocabulary
from captioner.weights import sha256_of

Model = TypeVar("Model", bound=CaptionModel)

FORMAT = "captioner"  # config.json's "format": what tells an exported folder from any other config.json
FORMAT_VERSION = 1  # bumped when a reader of an older version would misread the folder
WEIGHTS, CONFIG, VOCAB, DOMAIN = "model.safetensors", "config.json", "vocab.json", "domain.safetensors"
CARD = "README.md"
ENCODER_PREFIX = "encoder."  # the frame CNN's weights in model.safetensors (the rest: decoder.*, pool.*)


class ExportError(UserError, ValueError):
    """An exported folder that cannot be written or read: one line naming the file and what is wrong with it."""


# ----------------------------------------------------------------------------------------------- writing


def export_checkpoint(source: str | os.PathLike, out_dir: str | os.PathLike, include_backbone: bool = True,
                      onnx: bool = False) -> Path:
    """Export the checkpoint `source` (a `*.ckpt`, or a run folder: its best checkpoint) to the folder `out_dir`,
    with the run's facts for the model card (its data, the test metrics written beside the checkpoint).

    Raises:
        CheckpointError: `source` is not a captioner checkpoint.
        ExportError: `out_dir` holds files that are not an earlier export.
        WeightsUnavailableError: `include_backbone` and the backbone's weights cannot be had.
    """
    path = find_checkpoint(source)
    ckpt = read_checkpoint(path)
    model = load_model(ckpt, path)
    return save_folder(model, out_dir, facts=checkpoint_facts(ckpt, path), include_backbone=include_backbone,
                       onnx=onnx)


def checkpoint_facts(ckpt: dict, path: str | os.PathLike) -> dict[str, Any]:
    """What the model card and `captioner info` tell of a checkpoint beside its model: its data (dataset, split
    sizes), where it came from, and the test metrics training wrote beside it (`test_metrics.json`)."""
    data = ckpt.get("datamodule_hyper_parameters")
    data = dict(data) if isinstance(data, dict) else {}
    summary = ckpt.get("domain_summary") if isinstance(ckpt.get("domain_summary"), dict) else {}
    data_dir = data.get("data_dir")
    splits = {"train": summary.get("num_train") or None, "val": summary.get("num_val") or None, "test": None}
    annotations = Path(data_dir) / "annotations.json" if data_dir else None
    name = "synthetic" if data.get("synthetic") else (Path(data_dir).name if data_dir else None)
    if annotations is not None and annotations.is_file():  # the data is on this machine: its name, every split
        try:
            found = json.loads(annotations.read_text(encoding="utf-8"))
            splits.update({k: v for k, v in _split_sizes(found).items() if v})
            name = found.get("name") or name if isinstance(found, dict) else name
        except (OSError, ValueError, TypeError, AttributeError):
            pass  # an unreadable annotations file only costs the card a number
    return {
        "data": {"dataset": name, "splits": splits},
        "source": {"checkpoint": Path(path).name, "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")},
        "test_metrics": _test_metrics(path),
    }


def _split_sizes(annotations: Any) -> dict[str, int]:
    """Clips per split of an `annotations.json` (`{"videos": [{"split": ...}, ...]}` or a list of records)."""
    records = annotations.get("videos", annotations.get("clips", [])) if isinstance(annotations, dict) else annotations
    sizes: dict[str, int] = {}
    for record in records or []:
        if isinstance(record, dict) and isinstance(record.get("split"), str):
            sizes[record["split"]] = sizes.get(record["split"], 0) + 1
    return sizes


def _test_metrics(checkpoint: str | os.PathLike) -> Optional[dict[str, float]]:
    """The test metrics training wrote beside the checkpoint (`test_metrics.json`), else the run's newest ones."""
    checkpoint = Path(checkpoint)
    candidates = [checkpoint.parent / "test_metrics.json"]
    candidates += sorted(run_folder(checkpoint).rglob("test_metrics.json"), key=lambda p: p.stat().st_mtime,
                         reverse=True)
    for candidate in candidates:
        try:
            metrics = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(metrics, dict):
            return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return None


def save_folder(model: CaptionModel, out_dir: str | os.PathLike, facts: Optional[dict[str, Any]] = None,
                include_backbone: bool = True, onnx: bool = False) -> Path:
    """Write `model` as a self-contained folder: `model.safetensors` (decoder, temporal encoder and, with
    `include_backbone`, the frozen CNN: it then captions offline), `vocab.json`, `domain.safetensors` (the training
    videos' prototypes), `config.json` (format version, features, sizes, generation defaults, the familiarity
    threshold, each file's size and SHA-256) and `README.md` (a model card); with `onnx`, the ONNX graphs
    too (`captioner.onnx_export`).

    Without `include_backbone` the CNN is named (torchvision's name and weights) and fetched as training did.
    `config.json` is written last: a folder cut off mid-export is refused on reading, never half-read.

    Raises:
        ExportError: `out_dir` exists and holds files that are not an earlier export (nothing is overwritten).
        SettingsError: `onnx` for a model whose decoder attends over frames (`check_exportable`).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    _check_destination(out)
    if onnx:
        check_exportable(model)  # before any file is written
    out.mkdir(parents=True, exist_ok=True)
    facts = dict(facts or {})
    (out / CONFIG).unlink(missing_ok=True)  # an earlier export's config would vouch for files being replaced
    weights = {k: v for k, v in model.state_dict().items()}
    encoder = model.encoder if include_backbone or onnx else None  # the ONNX encoder holds the CNN in any case
    if include_backbone:
        weights.update({ENCODER_PREFIX + k: v for k, v in encoder.state_dict().items()})
    # safetensors refuses tensors sharing memory and wants them contiguous: one plain copy each, on the CPU
    weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(weights, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, 0o644)  # safetensors writes owner-only files: this folder is made to be shared
    write_text_atomic(out / VOCAB, json.dumps(list(model.vocab.itos), ensure_ascii=False, indent=0) + "\n")
    files = [WEIGHTS, VOCAB]
    if model.domain is not None:
        with atomic_path(out / DOMAIN) as tmp:
            save_file({"prototypes": model.domain.prototypes.detach().cpu().half().contiguous()}, str(tmp))
            os.chmod(tmp, 0o644)
        files.append(DOMAIN)
    else:
        (out / DOMAIN).unlink(missing_ok=True)
    for name in ONNX_FILES:
        (out / name).unlink(missing_ok=True)
    if onnx:
        from captioner.onnx_export import export_onnx

        files += export_onnx(model, out)
    config = _config_of(model, facts, encoder, include_backbone, weights)
    write_text_atomic(out / CARD, model_card(config))
    config["files"] = {name: _file_record(out / name) for name in files}
    write_text_atomic(out / CONFIG, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return out


def _check_destination(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder: choose a new folder to export to")
    if out.is_dir() and any(out.iterdir()) and not _is_export_config(out / CONFIG):
        raise ExportError(f"{out}: holds files that are not an exported captioner: choose a new or empty folder")


def _is_export_config(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}


def _config_of(model: CaptionModel, facts: dict, encoder: Optional[FrameEncoder], include_backbone: bool,
               weights: dict) -> dict[str, Any]:
    """config.json's content (less the files' records): everything needed to rebuild and describe the model."""
    if model.config is None:
        raise ExportError("this model was composed of modules, not built from a CaptionerConfig: export a model "
                          "loaded from a checkpoint (or built with CaptionModel.from_config)")
    count = lambda prefix: sum(v.numel() for k, v in weights.items() if k.startswith(prefix))  # noqa: E731
    backbone = (sum(p.numel() for p in encoder.parameters()) if encoder is not None
                else _backbone_parameters(model.spec))  # parameters only, as the decoder's (no BatchNorm statistics)
    return _description(model.spec, model.config, model.generation, len(model.vocab), include_backbone,
                        encoder.preprocessing if encoder is not None else None,
                        {"decoder": count("decoder."), "temporal": count("pool."), "backbone": backbone},
                        model.domain, facts)


def _description(spec: FeatureSpec, arch: CaptionerConfig, generation: GenerationConfig, vocab_size: int,
                 included: Optional[bool], pre: Optional[Preprocessing], parameters: dict,
                 domain: Optional[DomainSummary], facts: dict) -> dict[str, Any]:
    """What an exported folder's config.json holds and `captioner info` tells, of an exported folder or checkpoint."""
    d = domain
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "feature_spec": dataclasses.asdict(spec),  # every field, defaults included: readers need not know them
        "model": arch.to_dict(),
        "generation": generation.to_dict(),
        "vocab_size": vocab_size,
        "backbone": {
            "name": spec.backbone, "weights": spec.weights, "included": included,
            "preprocessing": None if pre is None else {"resize_size": pre.resize_size, "crop_size": pre.crop_size,
                                                       "mean": list(pre.mean), "std": list(pre.std)},
        },
        "parameters": parameters,
        "domain": None if d is None else {
            "threshold": d.threshold, "quantile": d.quantile, "quantiles_1_5_50": d.val_quantiles,
            "prototypes": int(d.prototypes.shape[0]), "num_train": d.num_train, "num_held_out": d.num_held_out,
            "num_val": d.num_val},
        "data": facts.get("data"),
        "source": facts.get("source"),
        "test_metrics": facts.get("test_metrics"),
    }


def _backbone_parameters(spec: FeatureSpec) -> Optional[int]:
    """The frame CNN's parameter count, from its architecture alone (built on the meta device: no weights)."""
    try:
        with torch.device("meta"):
            net = FrameEncoder(spec.backbone, weights=None, image_size=spec.image_size, spatial_grid=spec.spatial_grid)
        return sum(p.numel() for p in net.parameters())
    except Exception:  # a backbone that cannot be built on the meta device: the count is only informative
        return None


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """What a model holds (`captioner info`): an exported folder's config.json (checked, as `read_config`), or the
    same facts of a checkpoint or run folder (its best checkpoint), read without building the model.

    Raises:
        ExportError, CheckpointError: a damaged folder, or not a captioner checkpoint.
    """
    path = Path(path)
    if is_export_folder(path):
        config = read_config(path)
        return {**config, "path": str(path), "kind": "exported folder"}
    file = find_checkpoint(path)
    ckpt = read_checkpoint(file, mmap=True)
    hp = ckpt["hyper_parameters"]
    try:
        spec = FeatureSpec.from_dict(hp["feature_spec"])
        stored = ckpt.get(CONFIG_KEY)
        arch = CaptionerConfig(**stored) if isinstance(stored, dict) else CaptionerConfig.from_hparams(hp)
        generation = GenerationConfig.from_hparams(hp)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{file}: inconsistent captioner checkpoint ({type(err).__name__}: {err})") from None
    state = ckpt["state_dict"]
    count = lambda prefix: sum(v.numel() for k, v in state.items()  # noqa: E731
                               if isinstance(k, str) and k.startswith(prefix) and torch.is_tensor(v))
    summary = ckpt.get("domain_summary")
    domain = DomainSummary.from_dict(summary) if isinstance(summary, dict) and "prototypes" in summary else None
    params = {"decoder": count("model.decoder."), "temporal": count("model.pool."),
              "backbone": _backbone_parameters(spec)}
    described = _description(spec, arch, generation, len(hp["vocab"]), None, None, params, domain,
                             checkpoint_facts(ckpt, file))
    return {**described, "path": str(file), "kind": "checkpoint"}


# ----------------------------------------------------------------------------------------------- the model card

_METRIC_NAMES = {"bleu4": ("bleu", "BLEU-4"), "meteor": ("meteor", "METEOR"), "rouge_l": ("rouge", "ROUGE-L"),
                 "cider": ("cider", "CIDEr-D")}


def model_card(config: dict[str, Any]) -> str:
    """The folder's `README.md`: a Hugging Face model card (YAML header: library, tags, datasets, metrics) and the
    plain facts a user needs (what it was trained on, where its captions can be trusted, how to load it)."""
    data = config.get("data") or {}
    dataset = data.get("dataset")
    splits = data.get("splits") or {}
    metrics = config.get("test_metrics") or {}
    backbone = config["backbone"]
    spec = config["feature_spec"]
    model = config["model"]
    domain = config.get("domain")
    header = ["---", "library_name: captioner", "license: apache-2.0",
              "tags:", *(f"- {t}" for t in ("video-captioning", "video-to-text", "pytorch", "safetensors",
                                            f"backbone-{backbone['name']}")),
              "pipeline_tag: video-text-to-text"]
    if dataset:
        header += ["datasets:", f"- {dataset}"]
    shown = [(key, *_METRIC_NAMES[key]) for key in _METRIC_NAMES if key in metrics]
    if shown:
        header += ["metrics:", *(f"- {kind}" for _, kind, _ in shown),
                   "model-index:", "- name: captioner", "  results:", "  - task:", "      type: video-captioning",
                   "      name: Video captioning", "    dataset:", f"      name: {dataset or 'unknown'}",
                   f"      type: {dataset or 'unknown'}", "      split: test", "    metrics:"]
        for key, kind, label in shown:
            header += [f"    - type: {kind}", f"      name: {label}", f"      value: {round(metrics[key], 4)}"]
    header.append("---")
    sizes = ", ".join(f"{n} {split}" for split, n in splits.items() if n) or "sizes not recorded"
    params = config.get("parameters") or {}
    trained = sum(v for k, v in params.items() if k != "backbone" and v)
    lines = [
        "", f"# Video captioner ({dataset or 'unknown data'}, {backbone['name']} + {model['temporal']} pooling + "
        "LSTM decoder)", "",
        "A video captioning model made with `captioner` (PyTorch Lightning): a frozen image "
        f"CNN ({backbone['name']}, weights {backbone['weights'] or 'random'}) encodes {spec['num_frames']} frames "
        f"sampled uniformly from the clip, a {model['temporal']} temporal encoder pools them, and an LSTM decoder "
        f"({model['hidden_dim']} hidden units, {model['num_layers']} layer(s), {config['vocab_size']} words) writes "
        f"one sentence. {trained:,} trained parameters"
        + (f"; the CNN's {params['backbone']:,} are included." if params.get("backbone") else
           "; the CNN's weights are not included: torchvision downloads them on first use."), "",
        "## Training data", "",
        f"Trained on **{dataset or 'unrecorded data'}** ({sizes} clips)."
        " It describes videos like those only. **Outside that domain its captions are unreliable**: it names the "
        "nearest training situation, in fluent words, whatever the video shows.", "",
    ]
    if domain:
        basis = domain["num_held_out"] + domain["num_val"]
        lines += [
            "Each caption comes with a *familiarity* (cosine similarity, 0-1, of the video to the nearest of "
            f"{domain['prototypes']} prototypes of the {domain['num_train']} training videos). Videos below "
            f"**{domain['threshold']:.3f}** are flagged as out of domain (the threshold rests on {basis} clips: "
            f"{domain['num_held_out']} held-out training and {domain['num_val']} validation).", ""]
    if metrics:
        lines += ["## Test metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {label} | {metrics[key]:.4f} |" for key, _, label in shown]
        lines += [f"| {key} | {value:.4f} |" for key, value in metrics.items() if key not in _METRIC_NAMES]
        lines.append("")
    lines += [
        "## Use", "", "With this project's `captioner` package installed:", "", "```bash",
        "captioner caption my_video.mp4 --checkpoint THIS_FOLDER", "captioner info THIS_FOLDER", "```", "",
        "```python", "from captioner.api import VideoCaptioner", "",
        'model = VideoCaptioner.from_pretrained("THIS_FOLDER")  # a folder, or a Hugging Face Hub repo id',
        'print(model.caption("my_video.mp4"))', "```", "",
        "Loading reads safetensors and JSON only (no pickle, no code from the folder); every file's size and "
        "SHA-256 are checked against `config.json`.", "",
    ]
    return "\n".join(header + lines)


# ----------------------------------------------------------------------------------------------- reading


def is_export_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder holding an exported captioner's `config.json` (or meant to: a folder that has
    `model.safetensors` but lost its config is one, so reading it says what is missing)."""
    path = Path(path)
    return path.is_dir() and ((path / CONFIG).is_file() or (path / WEIGHTS).is_file())


def read_config(folder: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """An exported folder's `config.json`, its format version checked and (with `verify`) every file it lists
    checked: present, of the recorded size and SHA-256.

    Raises:
        ExportError: `<file>: <what is wrong>`, one line.
    """
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise ExportError(f"{path}: missing: not an exported captioner folder (export one with `captioner export`)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: not readable JSON ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ExportError(f"{path}: not an exported captioner's config (no \"format\": \"{FORMAT}\")")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ExportError(f"{path}: format version {version!r}, but this captioner reads version {FORMAT_VERSION} "
                          f"only: " + ("upgrade captioner" if isinstance(version, int) and version > FORMAT_VERSION
                                       else "export the model again"))
    files = config.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files or VOCAB not in files:
        raise ExportError(f"{path}: lists no {WEIGHTS} and {VOCAB} under \"files\"")
    if verify:
        for name, record in files.items():
            _verify(folder / name, record)
    return config


def _verify(path: Path, record: Any) -> None:
    if not path.is_file():
        raise ExportError(f"{path}: missing (config.json lists it): copy the whole exported folder")
    size = path.stat().st_size
    if not isinstance(record, dict) or size != record.get("bytes"):
        recorded = record.get("bytes") if isinstance(record, dict) else "?"
        raise ExportError(f"{path}: {size} bytes, but config.json records {recorded}: "
                          "the file was altered or cut off; copy it again")
    if sha256_of(path) != record.get("sha256"):
        raise ExportError(f"{path}: its SHA-256 differs from the one config.json records: the file was altered; "
                          "copy it again")


def read_vocab(folder: str | os.PathLike, config: dict[str, Any]) -> Vocabulary:
    """The folder's vocabulary, checked against the size config.json records."""
    path = Path(folder) / VOCAB
    try:
        words = json.loads(path.read_text(encoding="utf-8"))
        vocab = Vocabulary(words)
    except (OSError, ValueError, TypeError) as err:
        raise ExportError(f"{path}: not a vocabulary ({type(err).__name__}: {err})") from None
    if len(vocab) != config.get("vocab_size"):
        raise ExportError(f"{path}: {len(vocab)} words, but config.json says the model has {config.get('vocab_size')}")
    return vocab


def _load_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except Exception as err:  # a damaged header: safetensors' own error types vary by version
        raise ExportError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None


def load_folder(folder: str | os.PathLike, model_class: type[Model] = CaptionModel,
                map_location: str | torch.device = "cpu") -> Model:
    """The model of an exported folder, in eval mode: JSON and safetensors only, every file checked first
    (`read_config`). Without the backbone's weights in the folder, the CNN is built from its name on first use.

    Raises:
        ExportError: a missing or altered file, an unknown format version, a vocabulary or config that does not fit
            the weights: one line naming the file.
    """
    folder = Path(folder)
    config = read_config(folder)
    vocab = read_vocab(folder, config)
    try:
        spec = FeatureSpec.from_dict(config["feature_spec"])
        arch = CaptionerConfig(**config["model"])
        generation = GenerationConfig(**config["generation"])
    except (KeyError, TypeError, ValueError) as err:
        raise ExportError(f"{folder / CONFIG}: inconsistent ({type(err).__name__}: {err})") from None
    weights = _load_safetensors(folder / WEIGHTS)
    rows = weights.get("decoder.embed.weight")
    if rows is None or rows.shape[0] != len(vocab):
        raise ExportError(f"{folder / VOCAB}: {len(vocab)} words, but the weights in {WEIGHTS} are for "
                          f"{None if rows is None else rows.shape[0]}: the vocabulary does not fit the model")
    model = model_class.from_config(arch, vocab, spec, generation)
    own = {k: v for k, v in weights.items() if not k.startswith(ENCODER_PREFIX)}
    try:
        model.load_state_dict(own)
    except RuntimeError as err:
        reason = " ".join(str(err).split())[:300]
        raise ExportError(f"{folder / WEIGHTS}: the weights do not fit the model config.json describes "
                          f"({reason})") from None
    backbone = {k[len(ENCODER_PREFIX):]: v for k, v in weights.items() if k.startswith(ENCODER_PREFIX)}
    if config["backbone"].get("included"):
        model.attach_encoder(_encoder_of(folder, config, spec, backbone))  # the constructor's `encoder`, built late
    if (folder / DOMAIN).is_file() and config.get("domain"):
        d = config["domain"]
        model.domain = DomainSummary(_load_safetensors(folder / DOMAIN)["prototypes"], float(d["threshold"]),
                                     float(d.get("quantile", 0.01)), d.get("quantiles_1_5_50"),
                                     int(d.get("num_train", 0)), int(d.get("num_held_out", 0)),
                                     int(d.get("num_val", 0)))
    return model.eval().to(map_location)


def _encoder_of(folder: Path, config: dict, spec: FeatureSpec, state: dict[str, torch.Tensor]) -> FrameEncoder:
    """The frozen CNN from the folder's weights: built without its pretrained weights (nothing is downloaded),
    then given the folder's, and the preprocessing config.json records."""
    encoder = FrameEncoder(spec.backbone, weights=None, image_size=None, spatial_grid=spec.spatial_grid,
                           precision=spec.precision)
    pre = config["backbone"].get("preprocessing") or {}
    try:
        encoder.preprocessing = Preprocessing(int(pre["resize_size"]), int(pre["crop_size"]), tuple(pre["mean"]),
                                              tuple(pre["std"]))
        encoder.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:300]
        raise ExportError(f"{folder / WEIGHTS}: the backbone's weights do not fit {spec.backbone} ({reason})") from None
    return encoder.eval()


# ----------------------------------------------------------------------------------------------- the facade's side


def _is_repo_id(name: str) -> bool:
    """`owner/name` as the Hugging Face Hub spells a repository (and no local path)."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}", name)) and not Path(name).exists()


class Pretrained:
    """`from_pretrained` / `save_pretrained` for a `CaptionModel` class (Hugging Face's naming and conventions: a
    folder of safetensors + config.json + README.md, or a Hub repository holding one), mixed into
    `captioner.api.VideoCaptioner`."""

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, map_location: str | torch.device = "cpu",
                        revision: Optional[str] = None):
        """The model of an exported folder, or of a Hugging Face Hub repository id (`owner/name`, downloaded once
        into the Hub's cache; `revision`: a branch, tag or commit), in eval mode. Reads JSON and safetensors only.

        Raises:
            ExportError: a missing or damaged folder (one line naming the file), or a repository that cannot be had.
        """
        folder = Path(name_or_path)
        if not folder.exists() and _is_repo_id(str(name_or_path)):
            try:
                from huggingface_hub import snapshot_download
            except ImportError:
                raise ExportError(f"{name_or_path}: not a folder here, and loading it from the Hugging Face Hub needs "
                                  "huggingface_hub: pip install 'captioner[hub]'") from None
            try:
                folder = Path(snapshot_download(str(name_or_path), revision=revision))
            except Exception as err:  # no network, no such repository, no access: the Hub's errors vary
                reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
                raise ExportError(f"{name_or_path}: not a folder here, and not downloadable from the Hugging Face "
                                  f"Hub ({reason})") from None
        elif not folder.is_dir():
            raise ExportError(f"{folder}: no such folder (an exported captioner, or a Hub repository id owner/name)")
        model = load_folder(folder, cls, map_location)
        model.checkpoint_path = folder
        return model

    def save_pretrained(self, out_dir: str | os.PathLike, include_backbone: bool = True, onnx: bool = False) -> Path:
        """Write this model as an exported folder (`save_folder`), with the facts of the checkpoint or folder it was
        loaded from (its data, test metrics) for the model card; the folder."""
        source = getattr(self, "checkpoint_path", None)
        facts: dict[str, Any] = {}
        if source is not None and Path(source).is_file():
            facts = checkpoint_facts(read_checkpoint(source, mmap=True), source)
        elif source is not None and is_export_folder(source):
            config = read_config(source, verify=False)
            facts = {k: config.get(k) for k in ("data", "source", "test_metrics")}
        return save_folder(self, out_dir, facts, include_backbone=include_backbone, onnx=onnx)
