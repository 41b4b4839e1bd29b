"""`captioner prepare`: convert MSVD / MSR-VTT annotations to annotations.json."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from captioner.cli.parsing import command_parser, parse
from captioner.data.prepare import (MSRVTT_TEST, MSRVTT_TRAIN_VAL, MSRVTT_VIDEO_DIRS, MSVD_CORPUS, MSVD_MAPPING,
                                    first_existing, prepare_msrvtt, prepare_msvd)


# each dataset's subcommand: its help, description, default folder, annotation files and videos
DATASETS = {
    "msvd": dict(
        help="MSVD (MSR Video Description Corpus)",
        description="MSVD: English captions, split vid1-1200 train, 1201-1300 val, 1301-1970 test (clip order of "
                    "youtube_mapping.txt).",
        files={"--corpus": f"the corpus CSV (default: <root>/{MSVD_CORPUS})",
               "--mapping": f"clip -> vidN list (default: <root>/{MSVD_MAPPING})"},
        videos="folder of {VideoID}_{Start}_{End}.avi clips; repeatable (default: <root>/YouTubeClips, else "
               "<root>/videos)"),
    "msrvtt": dict(
        help="MSR-VTT",
        description="MSR-VTT: its own train/validate/test split.",
        files={"--train-val": f"(default: <root>/{MSRVTT_TRAIN_VAL})", "--test": f"(default: <root>/{MSRVTT_TEST})"},
        videos="folder of video<N>.mp4 clips; repeatable (default: <root>/TrainValVideo and <root>/TestVideo, else "
               "<root>/videos)"),
}


def build_parser():
    """`captioner prepare`'s parser: a subcommand per dataset (`msvd`, `msrvtt`), each with its files' options."""
    parser = command_parser(
        "captioner prepare",
        "Convert official MSVD / MSR-VTT annotations into annotations.json with the standard splits. Malformed rows, "
        "clips without a split or caption, and missing videos are reported on the console and in "
        "<out>/prepare_report.json. See data/README.md.")
    sub = parser.add_subcommands(dest="dataset", required=True)
    for name, dataset in DATASETS.items():
        p = command_parser(f"captioner prepare {name}", dataset["description"], config=False)
        p.add_argument("--root", default=f"data/{name}", help="dataset folder (default: %(default)s)")
        for flag, text in dataset["files"].items():
            p.add_argument(flag, help=text)
        p.add_argument("--videos", action="append", help=dataset["videos"])
        p.add_argument("--out", help="where annotations.json and prepare_report.json go (default: <root>)")
        p.add_argument("--keep-missing", action="store_true",
                       help="keep clips whose video file is missing or unreadable (default: leave them out; reported "
                            "either way)")
        p.add_argument("--check-videos", action="store_true",
                       help="open every video (container, first frame, and the frames the file holds against "
                            "those its header lists) and report empty, foreign, still-image or cut-off files; about "
                            "10 ms a clip (default: only check that the files exist; extraction reports the rest in "
                            "failed.txt)")
        sub.add_subcommand(name, p, help=dataset["help"])
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """`captioner prepare {msvd,msrvtt} ...`: returns 0 when annotations.json was written, 1 otherwise."""
    cfg = parse(build_parser(), argv)
    args = cfg[cfg.dataset]
    root = Path(args.root)
    out = Path(args.out) if args.out else root
    try:
        if cfg.dataset == "msvd":
            videos = args.videos or first_existing(root, ("YouTubeClips", "videos"))
            report = prepare_msvd(args.corpus or root / MSVD_CORPUS, args.mapping or root / MSVD_MAPPING, videos, out,
                                  args.keep_missing, args.check_videos)
        else:
            videos = args.videos or [root / MSRVTT_VIDEO_DIRS["train"], root / MSRVTT_VIDEO_DIRS["test"],
                                     root / "videos"]
            report = prepare_msrvtt([args.train_val or root / MSRVTT_TRAIN_VAL, args.test or root / MSRVTT_TEST],
                                    videos, out, args.keep_missing, args.check_videos)
    except (OSError, ValueError) as err:
        print(f"captioner prepare: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"Full report: {out / 'prepare_report.json'}")
    return 0
