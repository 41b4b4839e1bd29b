"""`captioner evaluate`: caption a split with a checkpoint and score it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from captioner.evaluate import TOKENIZERS, evaluate


def build_parser():
    """`captioner evaluate`'s parser (the convention of captioner.cli.parsing: options from --config files too)."""
    from captioner.cli.parsing import command_parser, non_negative_int, positive_int

    parser = command_parser(
        "captioner evaluate",
        description="Caption a split with a checkpoint and score it: BLEU-1..4 (NLTK), and METEOR, ROUGE-L, CIDEr "
                    "and coco_bleu1..4 from pycocoevalcap (optional extra `coco`; METEOR needs Java). Writes "
                    "<out>/predictions.json ([{video, caption, score, familiarity, in_domain, references}]) and "
                    "<out>/metrics.json.")
    parser.add_argument("--checkpoint", required=True,
                        help="training checkpoint (.ckpt), or a run folder: its best checkpoint")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="(default: %(default)s)")
    parser.add_argument("--data-dir", help="dataset folder with annotations.json (default: the checkpoint's)")
    parser.add_argument("--features-dir", help="root of the feature cache (default: the checkpoint's, "
                                               "else data/features); clips not cached are encoded from the video")
    parser.add_argument("--out", help="output folder (default: <checkpoint folder>/eval-<split>, or "
                                      "eval-<dataset folder name>-<split> for another dataset than the "
                                      "checkpoint's; a folder holding another evaluation is never reused: -2, -3, "
                                      "... is added)")
    parser.add_argument("--beam-size", type=positive_int, help="beam width, 1 = greedy (default: the checkpoint's)")
    parser.add_argument("--max-len", type=positive_int, help="longest caption in words (default: the checkpoint's)")
    parser.add_argument("--length-penalty", type=float, help="(default: the checkpoint's)")
    parser.add_argument("--no-repeat-ngram", type=non_negative_int, metavar="N",
                        help="never repeat a word N-gram in a caption, nor a word three times in a row or more "
                             "than N times; 0 = off "
                             "(default: the checkpoint's, 3)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="clips per batch (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument("--tokenizer", default="project", choices=TOKENIZERS,
                        help="tokenisation for the coco-caption metrics: project = the vocabulary's (no Java), "
                             "ptb = coco-caption's Stanford PTBTokenizer (Java) (default: %(default)s)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves starting Java; default: computed)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    parser.add_argument("--html", nargs="?", const=True, metavar="PATH",
                        help="also write a self-contained HTML report: every clip's sampled frames, caption, "
                             "references and per-clip BLEU-4 / CIDEr-D, sortable (default: none; without PATH: "
                             "<out>/report.html)")
    return parser


def _print_domain(report: dict) -> None:
    """How many clips are like the checkpoint's training videos; a warning when most are not: its scores then
    measure a model on data it never saw the like of (another dataset's checkpoint)."""
    inside, total = report.get("in_domain_clips"), report["num_clips"]
    if inside is None:
        if total:
            print("in domain: not known (the checkpoint predates familiarity scores)")
        return
    print(f"in domain: {inside} of {total} clips ({100 * inside / total:.0f} %)")
    if inside < total / 2:
        trained_on = f" ({report['trained_on']})" if report.get("trained_on") else ""
        print(f"captioner evaluate: warning: {total - inside} of {total} clips of {report['data_dir']} are unlike "
              f"this checkpoint's training videos{trained_on}: its captions and scores here are unreliable",
              file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> int:
    """`captioner evaluate --checkpoint CKPT --split test`; returns 0 on success, 2 for a bad checkpoint or setting
    (or backbone weights neither here nor downloadable), 1 on another error."""
    from captioner.checkpointing import CheckpointError
    from captioner.errors import UserError

    from captioner.cli.parsing import parse

    args = parse(build_parser(), argv)
    try:
        report = evaluate(args.checkpoint, args.split, args.data_dir, args.features_dir, args.out, args.beam_size,
                          args.max_len, args.length_penalty, args.no_repeat_ngram, args.batch_size, args.device,
                          args.tokenizer, meteor=not args.no_meteor, progress=not args.no_progress,
                          html=args.html)
    except (CheckpointError, UserError) as err:  # a bad --checkpoint or setting, weights not here: nothing evaluated
        print(f"captioner evaluate: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        print(f"captioner evaluate: {err}", file=sys.stderr)
        return 1
    if report.get("replaced"):
        was = report["replaced"]
        print(f"captioner evaluate: warning: {Path(report['predictions']).parent} held another evaluation "
              f"({was['checkpoint']} on {was['data_dir']}, split {was['split']}): replaced by this one",
              file=sys.stderr)
    print(f"checkpoint: {report['checkpoint']}")
    print(f"{report['split']}: {report['num_clips']} clips, generation {report['generation']}")
    _print_domain(report)
    for k, v in report["metrics"].items():
        print(f"  {k:11s} {v:.4f}")
    for k, why in report["unavailable"].items():
        print(f"  {k:11s} -- {why}")
    if report["skipped"]:
        print(f"{len(report['skipped'])} clips could not be read and were left out (listed in metrics.json)")
    out = Path(report["predictions"]).parent
    print(f"Predictions: {out / 'predictions.json'}\nMetrics:     {out / 'metrics.json'}")
    if report.get("html"):
        print(f"Report:      {report['html']}")
    return 0
