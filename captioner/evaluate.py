"""Evaluate a checkpoint on a split with the field's metrics: BLEU-1..4 (NLTK), and METEOR, ROUGE-L, CIDEr (coco-caption).

Tokenisation. Both the project's BLEU and, by default, the coco-caption metrics see captions tokenised by
`captioner.vocab.tokenize` (lowercase Penn Treebank tokens, punctuation dropped): the same words the model
was trained on, no Java needed. `--tokenizer ptb` runs coco-caption's own Stanford PTBTokenizer (Java) on the
captions instead, as the published coco-caption numbers do; both lowercase, split Treebank-style and drop
punctuation, so the two rarely differ: coco-caption keeps brackets as `-lrb-`/`-rrb-` tokens (it lowercases them
before its punctuation filter) and a few symbols such as `&`, which `tokenize` drops.

BLEU is reported twice: `bleu1..4` from NLTK's `corpus_bleu` (the project's metric, also logged in training) and
`coco_bleu1..4` from coco-caption's scorer. On the same tokens both clip n-gram counts by the references, take
the closest reference length (the shorter on a tie) for the brevity penalty and pool the counts over the corpus,
so for captions of at least 4 words they agree to about 1e-9. They differ by design in two corners:
- NLTK counts at least one n-gram per hypothesis (`max(1, count)`), so an empty caption, or one shorter than n
  words for BLEU-n, adds 1 to NLTK's n-gram total and 0 to coco-caption's: NLTK's BLEU-N is lower by the
  factor `prod_n (total_n / (total_n + short_n)) ** (1 / N)` (`short_n`: hypotheses shorter than n words).
- coco-caption adds 1e-15 to every matched count and 1e-9 to every total, so an n-gram order with no match
  at all gives NLTK exactly 0 and coco-caption a tiny positive score.
Published MSVD/MSR-VTT numbers come from coco-caption: compare them with `coco_bleu4`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

from captioner.io import write_json_atomic
from captioner.metrics import bleu_scores

TOKENIZERS = ("project", "ptb")
COCO_MISSING = "pycocoevalcap is not installed (pip install -e '.[coco]')"
JAVA_MISSING = "needs Java: no `java` on PATH (install a JRE, e.g. `apt-get install default-jre-headless`)"
SPICE_OFFLINE = ("not computed: SPICE downloads Stanford CoreNLP models on first use and needs network access; "
                 "it is not available offline")


def _coco_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pycocoevalcap") is not None


def tokenize_for_coco(captions: dict[int, list[str]], tokenizer: str = "project") -> dict[int, list[str]]:
    """`{clip: [caption, ...]}` -> the same with each caption as space-separated lowercase tokens.

    Raises:
        RuntimeError: `ptb` was asked for but Java or pycocoevalcap is missing, or the tokenizer failed.
    """
    if tokenizer == "project":
        from captioner.vocab import tokenize

        return {k: [" ".join(tokenize(c)) for c in caps] for k, caps in captions.items()}
    if tokenizer != "ptb":
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    if not _coco_available():
        raise RuntimeError(f"--tokenizer ptb: {COCO_MISSING}")
    if shutil.which("java") is None:
        raise RuntimeError(f"--tokenizer ptb {JAVA_MISSING}")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    try:
        # it writes a temporary file next to its jar: that folder must be writable
        out = PTBTokenizer().tokenize({k: [{"caption": c} for c in caps] for k, caps in captions.items()})
    except Exception as err:
        raise RuntimeError(f"coco-caption's PTBTokenizer failed ({type(err).__name__}: {err})") from None
    return {k: out.get(k, [""] * len(caps)) for k, caps in captions.items()}


def _rouge_l(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    from pycocoevalcap.rouge.rouge import Rouge

    rouge = Rouge()
    # coco-caption's Rouge divides by the hypothesis length: an empty caption scores 0 instead of crashing it
    scores = [rouge.calc_score(res[k], gts[k]) if res[k][0].split() else 0.0 for k in gts]
    return float(sum(scores) / len(scores))


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()  # a Java subprocess
    try:
        score, _ = meteor.compute_score(gts, res)
    finally:
        del meteor  # its __del__ stops the Java process
    return float(score)


def coco_scores(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    tokenizer: str = "project",
    meteor: bool = True,
) -> tuple[dict[str, float], dict[str, str]]:
    """coco-caption's BLEU-1..4, METEOR, ROUGE-L and CIDEr of one hypothesis per clip against its references.

    Returns:
        `(scores, unavailable)`: the metrics computed, and for each one that could not be, the reason
        (pycocoevalcap missing, no Java for METEOR, SPICE offline). Never raises for a missing dependency.
    """
    names = ("coco_bleu1", "coco_bleu2", "coco_bleu3", "coco_bleu4", "meteor", "rouge_l", "cider")
    unavailable: dict[str, str] = {"spice": SPICE_OFFLINE}
    if not _coco_available():
        return {}, {**{k: COCO_MISSING for k in names}, **unavailable}
    if not hypotheses:
        return {}, {**{k: "no captions to score" for k in names}, **unavailable}
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    try:
        gts = tokenize_for_coco({i: list(r) for i, r in enumerate(references)}, tokenizer)
        res = tokenize_for_coco({i: [h] for i, h in enumerate(hypotheses)}, tokenizer)
    except RuntimeError as err:
        return {}, {**{k: str(err) for k in names}, **unavailable}
    scores: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores.update({f"coco_bleu{n + 1}": float(b) for n, b in enumerate(bleu)})
    scores["rouge_l"] = _rouge_l(gts, res)
    scores["cider"] = float(Cider().compute_score(gts, res)[0])
    if not meteor:
        unavailable["meteor"] = "not asked for (--no-meteor)"
    elif shutil.which("java") is None:
        unavailable["meteor"] = f"METEOR {JAVA_MISSING}"
    else:
        try:
            scores["meteor"] = _meteor(gts, res)
        except Exception as err:  # the JVM failed to start or died (memory, a broken install)
            unavailable["meteor"] = f"METEOR failed in Java ({type(err).__name__}: {err})"
    return scores, unavailable


def _same_path(a, b) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def _evaluation_in(folder: Path) -> Optional[tuple]:
    """`(checkpoint, data_dir, split)` of the evaluation whose `metrics.json` is in `folder`; `None` when there is
    none; `("?",)` when one is there but unreadable (then it is treated as another evaluation, kept)."""
    import json

    path = folder / "metrics.json"
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        return report["checkpoint"], report["data_dir"], report["split"]
    except (OSError, ValueError, KeyError, TypeError):
        return ("?",)


def _is_this_evaluation(found: Optional[tuple], checkpoint: Path, data_dir, split: str) -> bool:
    return found is not None and len(found) == 3 and _same_path(found[0], checkpoint) and \
        _same_path(found[1], data_dir) and found[2] == split


def default_out_dir(checkpoint: Path, split: str, data_dir, own_data_dir=None) -> Path:
    """Where an evaluation goes by default: `<checkpoint folder>/eval-<split>/` for the checkpoint's own dataset,
    `eval-<dataset folder name>-<split>/` for another one (MSR-VTT's test split must not replace MSVD's).

    A folder holding another evaluation (another checkpoint of the same run folder, another dataset of the same
    folder name) is never reused: the first of `-2`, `-3`, ... that is free or holds this same evaluation (a rerun
    replaces itself) is taken.
    """
    own = _same_path(data_dir, own_data_dir)  # a checkpoint that does not say its dataset: named by the dataset
    stem = f"eval-{split}" if own else f"eval-{Path(data_dir).resolve().name}-{split}"
    candidate, n = checkpoint.parent / stem, 1
    while True:
        found = _evaluation_in(candidate)
        if found is None or _is_this_evaluation(found, checkpoint, data_dir, split):
            return candidate
        n += 1
        candidate = checkpoint.parent / f"{stem}-{n}"


def evaluate(
    checkpoint: str | os.PathLike,
    split: str = "test",
    data_dir: Optional[str] = None,
    features_dir: Optional[str] = None,
    out_dir: Optional[str | os.PathLike] = None,
    beam_size: Optional[int] = None,
    max_len: Optional[int] = None,
    length_penalty: Optional[float] = None,
    no_repeat_ngram: Optional[int] = None,
    batch_size: int = 32,
    device: str = "auto",
    tokenizer: str = "project",
    meteor: bool = True,
    progress: bool = True,
    html: Optional[str | os.PathLike | bool] = None,
) -> dict:
    """Caption every clip of a split and score the captions; write `predictions.json` and `metrics.json`.

    Features come from the training cache when present (`features_dir/<data_dir name>/<spec key>/`); missing
    ones are computed on the fly from the video (not saved). Unreadable clips are reported and left out.

    Args:
        checkpoint: a training checkpoint (`*.ckpt`), loaded safely, or a run folder (its best checkpoint, see
            `find_checkpoint`).
        split: `train`, `val` or `test`.
        data_dir, features_dir: default to the values stored in the checkpoint by the DataModule.
        out_dir: default `<checkpoint folder>/eval-<split>/`, or `eval-<dataset folder name>-<split>/` for
            a dataset other than the checkpoint's (see `default_out_dir`: never another evaluation's folder).
        beam_size, max_len, length_penalty, no_repeat_ngram: default to the checkpoint's.
        tokenizer: `project` (the vocabulary's tokenizer) or `ptb` (coco-caption's, needs Java) for the
            coco-caption metrics.
        meteor: compute METEOR (Java, about half a minute to load its paraphrase table).
        html: also write the HTML report (`captioner.report`) there; `True`: `<out_dir>/report.html`.

    Returns:
        The report written to `metrics.json`: with `in_domain` (the fraction of clips in the checkpoint's domain)
        and `in_domain_clips`, and `replaced` (`{checkpoint, data_dir, split}`) when an explicit `out_dir` held
        another evaluation, now overwritten.
    """
    from captioner.api import VideoCaptioner
    from captioner.checkpointing import find_checkpoint
    from captioner.device import resolve_device
    from captioner.features.cache import FeatureCache
    from captioner.report import FrameStrips, check_report_path

    checkpoint = find_checkpoint(checkpoint)
    dev = resolve_device(device)
    if html not in (None, True):
        check_report_path(html)  # before the work, not after
    model = VideoCaptioner.from_checkpoint(checkpoint, map_location=dev)  # read once: the model and its data settings
    own_data_dir = model.data_settings.get("data_dir")
    data_dir = data_dir or own_data_dir
    features_dir = features_dir or model.data_settings.get("features_dir") or "data/features"
    if not data_dir:
        raise ValueError(f"{checkpoint} does not say which dataset it was trained on: pass --data-dir")
    out_dir, replaced = _output_folder(out_dir, checkpoint, data_dir, split, own_data_dir)
    clips = _split_clips(data_dir, split)
    generation = model.generation.merged(beam_size=beam_size, max_len=max_len, length_penalty=length_penalty,
                                         no_repeat_ngram=no_repeat_ngram)
    strips = FrameStrips() if html is not None else None  # strips of the clips read from the video: not read twice
    predictions, skipped, from_video = caption_split(model, clips, FeatureCache.of_dataset(features_dir, data_dir,
                                                                                           model.spec),
                                                     generation, batch_size, progress, strips, split)
    metrics, unavailable = score_captions(predictions, tokenizer, meteor)
    report = {
        "checkpoint": str(checkpoint),
        "data_dir": str(data_dir),
        "trained_on": own_data_dir,
        "split": split,
        "num_clips": len(predictions),
        "features_from_cache": len(predictions) - from_video,
        "features_from_video": from_video,
        "generation": generation.to_dict(),
        "tokenizer": tokenizer,
        "metrics": metrics,
        **_in_domain(predictions),
        "unavailable": unavailable,
        "skipped": skipped,
        "predictions": str(out_dir / "predictions.json"),
        **({} if replaced is None else {"replaced": replaced}),
    }
    write_json_atomic(out_dir / "predictions.json", predictions)
    if html is not None:
        from captioner.report import write_evaluation_report

        report["html"] = str(write_evaluation_report(out_dir / "report.html" if html is True else html, report,
                                                     predictions, clips, model, strips, progress))
    write_json_atomic(out_dir / "metrics.json", report)
    return report


def _output_folder(out_dir, checkpoint: Path, data_dir, split: str, own_data_dir) -> tuple[Path, Optional[dict]]:
    """`(folder, replaced)`: `out_dir` as given, with the evaluation it held if another one (`{checkpoint, data_dir,
    split}`, `?` where unreadable), or `default_out_dir`'s folder and `None`."""
    if not out_dir:
        return default_out_dir(checkpoint, split, data_dir, own_data_dir), None
    out_dir = Path(out_dir)
    found = _evaluation_in(out_dir)
    if found is None or _is_this_evaluation(found, checkpoint, data_dir, split):
        return out_dir, None
    keys = ("checkpoint", "data_dir", "split")
    return out_dir, dict(zip(keys, found)) if len(found) == 3 else dict.fromkeys(keys, "?")


def _split_clips(data_dir, split: str) -> list:
    """The clips of `split` in `<data_dir>/annotations.json`; `ValueError` when there is none."""
    from captioner.data.datasets import load_annotations

    clips = [c for c in load_annotations(Path(data_dir) / "annotations.json") if c.split == split]
    if not clips:
        raise ValueError(f"{data_dir}/annotations.json has no clip in split {split!r}")
    return clips


def caption_split(model, clips: Sequence, cache, generation, batch_size: int = 32, progress: bool = True,
                  strips=None, split: str = "") -> tuple[list[dict], list[dict], int]:
    """Caption `clips` with `model` (a `VideoCaptioner`) through its one loop over videos, features from `cache`
    where it has them.

    Returns:
        `(predictions, skipped, from_video)`: `{video, caption, score[, familiarity, in_domain], references}` per
        captioned clip, `{video, reason}` per unreadable one, and how many were encoded from the video.
    """
    ids = {str(c.path): c.id for c in clips}
    cached = 0

    def features(path: str):
        nonlocal cached
        if not cache.has(ids[path]):
            return None
        cached += 1
        return cache.load(ids[path])

    results = model.caption_results([c.path for c in clips], batch_size, progress=progress,
                                    on_clip=strips.add if strips is not None else None, features=features,
                                    generation=generation, desc=f"Captioning {split}".strip())
    predictions, skipped = [], []
    for clip, r in zip(clips, results):
        if not r.ok:
            skipped.append({"video": clip.id, "reason": r.error})
            continue
        predictions.append({"video": clip.id, "caption": r.caption, "score": r.score,
                            **({} if r.familiarity is None else {"familiarity": r.familiarity,
                                                                 "in_domain": r.in_domain}),
                            "references": clip.captions})
    return predictions, skipped, len(predictions) - cached


def score_captions(predictions: Sequence[dict], tokenizer: str = "project",
                   meteor: bool = True) -> tuple[dict[str, float], dict[str, str]]:
    """`(metrics, unavailable)` of the predictions against their references: the project's BLEU and coco-caption's
    metrics (see `coco_scores`), sorted by name."""
    hyps = [p["caption"] for p in predictions]
    refs = [p["references"] for p in predictions]
    metrics = bleu_scores(hyps, refs)
    coco, unavailable = coco_scores(hyps, refs, tokenizer=tokenizer, meteor=meteor)
    metrics.update(coco)
    return {k: metrics[k] for k in sorted(metrics)}, unavailable


def _in_domain(predictions: Sequence[dict]) -> dict:
    """`in_domain` (the fraction of clips like the training videos) and `in_domain_clips`; `None` when unknown."""
    if not predictions or "in_domain" not in predictions[0]:
        return {"in_domain": None, "in_domain_clips": None}
    inside = sum(p["in_domain"] for p in predictions)
    return {"in_domain": inside / len(predictions), "in_domain_clips": inside}
