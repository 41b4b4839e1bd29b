"""`captioner caption`: caption video files and folders from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional

PROG = "captioner caption"

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
Caption video files with a trained captioner checkpoint.

Prints one line per video on stdout, `path<TAB>caption` (or, with --json, one JSON list of
{"video", "caption", "score", "familiarity", "in_domain"} records, with "error" instead of "caption" for a
file that failed). score: the caption's mean log-probability per word (0 = certain). familiarity: cosine
similarity (0-1) of the video to the checkpoint's training videos; a video below the checkpoint's in-domain
threshold gets a warning on stderr: its caption is unreliable.
A directory stands for every video file directly inside it, sorted by name.
With --segments, each video is cut into fixed windows of SECONDS or into scenes, and each segment is captioned:
one line per segment, `path<TAB>start<TAB>end<TAB>caption` (seconds), or one JSON record per segment with
"start" and "end"; --srt/--vtt write the captions as subtitles (see docs/caption.md).
A file that cannot be read (missing, not a video, truncated, no frames) gets one line on stderr
naming it and the reason; the other files are still captioned.

Exit status: 0 all videos captioned; 1 at least one video failed (or an unexpected error);
2 bad arguments or a bad checkpoint (nothing captioned)."""

EPILOG = """\
examples:
  captioner caption clip.mp4 --checkpoint runs/synthetic           # the run's best checkpoint
  captioner caption clip.mp4 --checkpoint runs/synthetic/logs/version_0/checkpoints/last.ckpt
  captioner caption videos/ --checkpoint model.ckpt --json > captions.json
  captioner caption a.mp4 b.mp4 --checkpoint model.ckpt --beam-size 1 --device cuda
  captioner caption long_lecture.mp4 --checkpoint model.ckpt --fast-seek
  captioner caption film.mp4 --checkpoint model.ckpt --segments 10 --vtt film.vtt --srt film.srt
  captioner caption films/ --checkpoint model.ckpt --segments scenes --vtt subtitles/   # one .vtt per video"""


def segments_option(text: str):
    """`--segments`'s type: a positive number of seconds or `scenes`; anything else a one-line usage error."""
    from captioner.segments import parse_segments

    try:
        return parse_segments(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds or 'scenes', got {text!r}") from None


def build_parser():
    """`captioner caption`'s parser (the convention of captioner.cli.parsing: options from --config files too)."""
    from captioner.cli.parsing import command_parser, non_negative_int, positive_int

    p = command_parser(PROG, DESCRIPTION, EPILOG)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files and/or directories of video files")
    p.add_argument("-c", "--checkpoint", required=True, metavar="CKPT",
                   help="a checkpoint written by training (*.ckpt; required), a run folder such as "
                        "runs/synthetic: its best checkpoint (the highest-scoring epoch*.ckpt), else last.ckpt, or "
                        "a folder written by `captioner export`. "
                        "Loaded safely: it cannot run code")
    p.add_argument("--beam-size", type=positive_int, metavar="K",
                   help="beam width, 1 = greedy decoding (default: the checkpoint's beam_size)")
    p.add_argument("--max-length", type=positive_int, metavar="N",
                   help="longest caption, in words (default: the checkpoint's max_len)")
    p.add_argument("--no-repeat-ngram", type=non_negative_int, metavar="N",
                   help="never repeat a word N-gram in a caption, nor a word three times in a row or more than N "
                        "times; 0 = off "
                        "(default: the checkpoint's no_repeat_ngram, 3)")
    p.add_argument("--frames", type=positive_int, metavar="T",
                   help="frames sampled uniformly over each video (default: the number the checkpoint was "
                        "trained with; another value works but captions may be worse)")
    p.add_argument("--fast-seek", action=argparse.BooleanOptionalAction, default=None,
                   help="approximate frame sampling for long videos: each sample moves to the nearest keyframe "
                        "(by up to half a keyframe interval, typically 1-2 s), so only keyframes are decoded, "
                        "often 10x faster or more; videos with fewer keyframes than sampled frames are read exactly "
                        "(default: exact sampling, or the checkpoint's own sampling if it was trained with keyframes)")
    p.add_argument("--segments", type=segments_option, metavar="SECONDS|scenes",
                   help="caption each segment of each video instead of the whole video: fixed windows of SECONDS, "
                        "or scenes (shots between cuts; a scene shorter than 1 s joins its neighbour, one longer than "
                        "30 s is split into windows) (default: off, one caption per video)")
    p.add_argument("--scene-detector", default="auto", choices=("auto", "pyscenedetect", "cnn"),
                   help="how --segments scenes finds cuts: pyscenedetect, PySceneDetect's content detector (pip "
                        "install 'captioner[scenes]'); cnn, the frame CNN's features 4 times a second; auto, "
                        "PySceneDetect where installed, else cnn (default: auto; docs/segments.md compares them)")
    p.add_argument("--srt", metavar="PATH",
                   help="with --segments, write the captions as SubRip subtitles: a file for one video; for several "
                        "videos (or a folder argument, or PATH an existing folder or ending in /) a folder, created "
                        "if missing, with one VIDEO_NAME.srt per video (default: none)")
    p.add_argument("--vtt", metavar="PATH", help="as --srt, as WebVTT subtitles (.vtt: what an HTML5 <track> plays) "
                   "(default: none)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tab-separated lines "
                   "(default: off)")
    p.add_argument("--html", metavar="PATH",
                   help="also write a self-contained HTML report there: each video's sampled frames, caption, score "
                        "and familiarity, sortable and searchable (default: none)")
    p.add_argument("--runtime", default="torch", choices=("torch", "onnx"),
                   help="torch: PyTorch; onnx: ONNX Runtime on the CPU, for a folder written by `captioner export "
                        "--onnx` (pip install 'captioner[onnx]') (default: torch)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to run the model; auto = cuda if a GPU is available, else cpu (default: auto)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="B",
                   help="videos encoded and decoded together (default: 8)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="CPU threads for PyTorch; 1 is often fastest on a busy machine (default: PyTorch's choice, "
                        "usually one per core)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: shown for more than 8 videos when stderr is a terminal)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Python tracebacks, debug messages and FFmpeg's own warnings on stderr (default: off)")
    return p


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    """Run `captioner caption` with `argv` (default: sys.argv[1:]); returns the exit status."""
    from captioner.cli.parsing import parse

    args = parse(build_parser(), argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("captioner").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    from captioner.video import set_ffmpeg_logging

    set_ffmpeg_logging(args.verbose)  # libav's own lines (`[h264 @ 0x...] ...`) only with --verbose
    try:
        return _run(args)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # the reader of stdout went away (`| head`): stop quietly, without a second error at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_SOME_FAILED
    except Exception as err:
        if args.verbose:
            raise
        _error(f"{type(err).__name__}: {err} (run with --verbose for the traceback)")
        return EXIT_SOME_FAILED


def _run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from captioner.checkpointing import CheckpointError
    from captioner.device import resolve_device
    from captioner.errors import UserError
    from captioner.api import VideoCaptioner

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    elif args.segments is not None:  # segments are decoded in a thread of their own: leave it a core
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads() - 1))
    try:
        if (args.srt or args.vtt) and args.segments is None:
            raise ValueError("--srt and --vtt need --segments SECONDS|scenes (subtitles are timed captions)")
        subtitle_paths = {kind: subtitle_target(path, args.videos) for kind, path in (("srt", args.srt),
                                                                                      ("vtt", args.vtt)) if path}
        if args.html:
            from captioner.report import check_report_path

            check_report_path(args.html)  # before any work
        device = resolve_device(args.device)
        if args.runtime == "onnx":
            from captioner.onnx_runtime import OnnxCaptioner

            model = OnnxCaptioner(args.checkpoint, threads=args.threads)
        else:
            model = VideoCaptioner.from_checkpoint(args.checkpoint, map_location=device)
    except (CheckpointError, ValueError) as err:
        if args.verbose:
            raise
        _error(str(err))
        return EXIT_USAGE
    try:
        model.encoder  # the backbone and its weights, before any video is read: a missing download is not theirs
    except UserError as err:
        if args.verbose:
            raise
        _error(str(err))
        return EXIT_USAGE
    if os.path.isdir(args.checkpoint):
        print(f"{PROG}: checkpoint {model.checkpoint_path}", file=sys.stderr, flush=True)
    if model.domain is None:
        print(f"{PROG}: note: {model.checkpoint_path} predates familiarity scores (no summary of its training "
              "videos): captions carry no in-domain flag", file=sys.stderr, flush=True)
    elif args.verbose:
        d = model.domain
        basis = (f"calibrated on {d.num_calibration} clips: {d.num_held_out} held-out training, {d.num_val} "
                 "validation" if d.num_calibration else "calibration clips not recorded (an older checkpoint)")
        print(f"{PROG}: in domain: familiarity >= {d.threshold:.2f} ({basis}; percentiles 1/5/50: "
              f"{', '.join(f'{q:.2f}' for q in d.val_quantiles or [])}; {len(d.prototypes)} prototypes of "
              f"{d.num_train} training videos)", file=sys.stderr, flush=True)
    generation = model.generation.merged(beam_size=args.beam_size, max_len=args.max_length,
                                         no_repeat_ngram=args.no_repeat_ngram)  # None: the checkpoint's
    # the attention encoder knows this many frame positions (an ONNX Runtime model has no attention, nor `pool`)
    position = getattr(getattr(model, "pool", None), "position", None)
    if args.frames is not None and position is not None and args.frames > position.num_embeddings:
        _error(f"--frames {args.frames}: this checkpoint's attention encoder has positions for at most "
               f"{position.num_embeddings} frames per video")
        return EXIT_USAGE
    if args.frames is not None and args.frames != model.spec.num_frames:
        print(f"{PROG}: warning: sampling {args.frames} frames per video; the checkpoint was trained with "
              f"{model.spec.num_frames}, so captions may be worse", file=sys.stderr, flush=True)
    logging.getLogger(__name__).debug("device %s, generation %s", device, generation)

    records, failed, total = [], 0, 0
    if args.html:
        from captioner.report import FrameStrips

        strips, shown = FrameStrips(), []  # the report's frames, kept as each video is read
    seek = None if args.fast_seek is None else ("keyframe" if args.fast_seek else "exact")
    timed: dict[str, list] = {}  # video -> its segments' results, for --srt/--vtt
    for result in model.caption_results(args.videos, batch_size=args.batch_size, num_frames=args.frames, seek=seek,
                                        progress=args.progress, on_clip=strips.add if args.html else None,
                                        generation=generation, segments=args.segments,
                                        scenes=args.scene_detector):
        total += 1
        if args.html:
            shown.append(result)
        where = result.video if result.start is None else f"{result.video} [{result.start:.3f}-{result.end:.3f} s]"
        if not result.ok:
            failed += 1
            tqdm.write(f"{PROG}: {where}: {result.error}", file=sys.stderr)
        elif result.in_domain is False:
            tqdm.write(f"{PROG}: warning: {where}: unlike this checkpoint's training videos (familiarity "
                       f"{result.familiarity:.2f}, in-domain >= {model.domain.threshold:.2f}): the caption is "
                       "unreliable", file=sys.stderr)
        elif args.verbose:
            extra = "" if result.familiarity is None else f", familiarity {result.familiarity:.2f}"
            tqdm.write(f"{PROG}: {where}: score {result.score:.2f}{extra}", file=sys.stderr)
        if result.start is not None and result.ok:
            timed.setdefault(result.video, []).append((result.start, result.end, result.caption))
        if args.json:
            records.append(result.to_dict())
        elif result.ok and result.start is not None:
            print(f"{result.video}\t{result.start:.3f}\t{result.end:.3f}\t{result.caption}", flush=True)
        elif result.ok:
            print(f"{result.video}\t{result.caption}", flush=True)
    if subtitle_paths:
        from captioner.subtitles import write_subtitles

        for kind, target in subtitle_paths.items():
            for video, cues in timed.items():
                written = write_subtitles(target(video, kind), cues, kind)
                print(f"{PROG}: {kind} {written}", file=sys.stderr, flush=True)
    if args.json:
        json.dump(records, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        sys.stdout.flush()
    if args.html:
        from captioner.report import write_caption_report

        report = write_caption_report(args.html, shown, model, strips, generation.to_dict(), args.frames,
                                      progress=args.progress is not False)
        print(f"{PROG}: report {report}", file=sys.stderr, flush=True)
    if failed:
        what = "segments" if args.segments is not None else "videos"
        print(f"{PROG}: {failed} of {total} {what} could not be captioned", file=sys.stderr, flush=True)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def subtitle_target(path: str, videos: list[str]):
    """Where `--srt`/`--vtt PATH` puts each video's file: `(video, kind) -> path`.

    PATH is a file for one video file; a folder (created now if missing) holding `<video name>.<kind>` per video
    when it is an existing folder or ends in `/`, or when several videos or a folder of them are captioned. Two
    videos of one name in different folders get `name-2.srt`, ...
    """
    from pathlib import Path

    target = Path(path)
    folder = (target.is_dir() or path.endswith(("/", os.sep)) or len(videos) > 1
              or any(Path(v).is_dir() for v in videos))
    if not folder:
        if not target.parent.is_dir():
            raise ValueError(f"{path}: the folder {target.parent} does not exist (create it first)")
        return lambda video, kind: target
    if target.exists() and not target.is_dir():
        raise ValueError(f"{path} is a file, but several videos need a folder for one subtitle file each")
    target.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}  # video -> its file name

    def name(video: str, kind: str) -> Path:
        if video not in names:
            stem, n = Path(video).stem, 1
            candidate = lambda n: stem if n == 1 else f"{stem}-{n}"  # noqa: E731
            while candidate(n) in names.values():
                n += 1
            names[video] = candidate(n)
        return target / f"{names[video]}.{kind}"

    return name
