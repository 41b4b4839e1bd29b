"""Convert the official MSVD and MSR-VTT annotation files into the project's `annotations.json` (standard splits)."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from captioner.io import write_json_atomic
from captioner.video import VIDEO_EXTENSIONS, VideoReadError, check_video
from captioner.vocab import tokenize

# The split used in the literature (Venugopalan et al. 2015, and most MSVD papers since): the clip order of
# youtube_mapping.txt, vid1..vid1200 train, vid1201..vid1300 val, vid1301..vid1970 test.
MSVD_SPLITS = (("train", 1, 1200), ("val", 1201, 1300), ("test", 1301, 1970))
MSVD_CORPUS = "MSR Video Description Corpus.csv"
MSVD_MAPPING = "youtube_mapping.txt"
MSVD_COLUMNS = ("VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description")
# MSR-VTT names its validation split "validate"
MSRVTT_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}
MSRVTT_TRAIN_VAL = "train_val_videodatainfo.json"
MSRVTT_TEST = "test_videodatainfo.json"
MSRVTT_VIDEO_DIRS = {"train": "TrainValVideo", "val": "TrainValVideo", "test": "TestVideo"}  # the archives' folders

# A clip id becomes a file name (its video, its feature file): letters, digits, `_`, `-` and inner dots only,
# so no id can name a folder or climb out of one.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-](?:[A-Za-z0-9_.-]*[A-Za-z0-9_-])?$")
_YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]+$")
# What spreadsheets and pandas write for an absent value: such a "description" is no caption (not the word "nan")
MISSING_TEXT = frozenset({"nan", "null", "none", "n/a", "na"})
QUOTE_LIMIT = 80  # characters of a file's content that a message quotes (a JSON file may be one 30 MB line)


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` cut to its first `limit` characters, `…` marking the cut: what a one-line message may quote."""
    return text if len(text) <= limit else text[:limit] + "…"


def _caption_text(raw: str) -> str:
    """The normalised caption of a raw description; empty for no word, and for a missing-value marker (`NaN`)."""
    return "" if raw.strip().casefold() in MISSING_TEXT else normalize_caption(raw)


def is_safe_id(clip_id: str) -> bool:
    return bool(_SAFE_ID.match(clip_id)) and ".." not in clip_id


def normalize_caption(caption: str) -> str:
    """The caption as the vocabulary sees it: lowercase tokens joined by spaces, punctuation dropped."""
    return " ".join(tokenize(caption))


@dataclass
class Problem:
    """One reported problem: which file and row (or entry), the clip if known, and why."""

    source: str
    where: str
    reason: str
    clip: Optional[str] = None


@dataclass
class PrepareReport:
    """What a conversion did: clips and captions per split, and every row or clip it skipped and why."""

    dataset: str
    annotations: str = ""
    clips: dict[str, int] = field(default_factory=dict)
    captions: dict[str, int] = field(default_factory=dict)
    malformed: list[Problem] = field(default_factory=list)  # rows or entries that could not be used
    skipped_clips: list[Problem] = field(default_factory=list)  # clips with no split or no caption
    missing_videos: list[Problem] = field(default_factory=list)  # listed, but no video file found
    unreadable_videos: list[Problem] = field(default_factory=list)  # found, but not a readable video (--check-videos)
    video_dirs: list[str] = field(default_factory=list)  # the folders searched for video files
    ignored_rows: dict[str, int] = field(default_factory=dict)  # well-formed rows left out on purpose, by reason

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self, limit: int = 10) -> str:
        lines = [f"{self.dataset}: wrote {self.annotations}"]
        hint = nested_video_hint(self.video_dirs) if self.missing_videos else ""
        for split in ("train", "val", "test"):
            lines.append(f"  {split:5s} {self.clips.get(split, 0):6d} clips {self.captions.get(split, 0):8d} captions")
        for reason, n in self.ignored_rows.items():
            lines.append(f"  ignored {n} rows: {reason}")
        for title, items in (("malformed rows/entries skipped", self.malformed),
                             ("clips skipped", self.skipped_clips),
                             (f"videos missing on disk ({looked_in(self.video_dirs)})", self.missing_videos),
                             ("videos that cannot be read (not videos, cut off, broken)", self.unreadable_videos)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines += [f"    {p.source}:{p.where}: {p.reason}" for p in items[:limit]]
                if len(items) > limit:
                    lines.append(f"    ... ({len(items) - limit} more in the report file)")
                if items is self.missing_videos and hint:
                    lines.append(f"    {hint}")
        return "\n".join(lines)


def index_videos(video_dirs: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """`{file stem: path}` of the video files directly inside `video_dirs` (the first folder wins on a clash)."""
    found: dict[str, Path] = {}
    for folder in video_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):  # one listing, not one stat per clip: fast for 10k files
            path = Path(entry.path)
            if path.suffix.lower() in VIDEO_EXTENSIONS and entry.is_file():
                found.setdefault(path.stem, path)
    return found


def looked_in(video_dirs: Sequence[str | os.PathLike]) -> str:
    """Where video files were looked for, and what each folder held: `looked in data/msvd/YouTubeClips (no video
    file)`."""
    def held(folder: Path) -> str:
        if not folder.is_dir():
            return "no such folder"
        n = len(index_videos([folder]))
        return f"{n} video file{'s' * (n != 1)}" if n else "no video file"

    return "looked in " + (", ".join(f"{Path(d)} ({held(Path(d))})" for d in video_dirs) or "no folder")


def nested_video_hint(video_dirs: Sequence[str | os.PathLike], limit: int = 3) -> str:
    """Where the video files are when they are one folder further down (an archive unpacked into a folder of its own
    name: `YouTubeClips/YouTubeClips/`): a sentence naming those folders, or "" if there are none."""
    found = []
    for folder in map(Path, video_dirs):
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):  # subfolders only: one listing, whatever the number of files
            if entry.is_dir() and index_videos([entry.path]):
                found.append(Path(entry.path))
    if not found:
        return ""
    found = sorted(set(found))
    n = sum(len(index_videos([sub])) for sub in found[:limit])
    more = f" (and {len(found) - limit} more folders)" if len(found) > limit else ""
    return (f"{n} video file{'s' * (n != 1)} one folder down: pass "
            f"{' '.join(f'--videos {sub}' for sub in found[:limit])}{more}")


def _relative_to_out(video: Path, out_dir: Path) -> str:
    """Paths inside the output folder are stored relative to it (the folder can move); others absolutely."""
    video, out_dir = video.resolve(), out_dir.resolve()
    try:
        return video.relative_to(out_dir).as_posix()
    except ValueError:
        return str(video)


def _finish(report: PrepareReport, name: str, entries: list[dict], videos: dict[str, Path], video_dirs: Sequence,
            expected_ext: str, out_dir: Path, keep_missing: bool, source: str,
            check_videos: bool = False, split_dirs: Optional[dict[str, str]] = None) -> PrepareReport:
    """Attach video paths, report missing (and, with `check_videos`, unreadable) files, write the outputs.

    A missing video is reported where it was expected: in the folder of `video_dirs` named `split_dirs[split]`
    (MSR-VTT's test clips live in `TestVideo/`, the others in `TrainValVideo/`), else in the first folder.
    """
    out_dir = Path(out_dir)
    report.video_dirs = [str(d) for d in video_dirs]
    kept = []
    first_dir = Path(video_dirs[0]) if video_dirs else out_dir / "videos"
    by_name = {Path(d).name: Path(d) for d in reversed(list(video_dirs))}  # the first folder of a name wins
    for e in entries:
        path = videos.get(e["id"])
        if path is None:
            folder = by_name.get((split_dirs or {}).get(e["split"], ""), first_dir)
            expected = folder / f"{e['id']}{expected_ext}"
            report.missing_videos.append(Problem(source, e["id"], f"no video file (expected {expected})", e["id"]))
            if not keep_missing:
                continue
            path = expected
        elif check_videos:
            try:
                check_video(path)  # container, first frame, frames present: empty, foreign, photos, cut off
            except VideoReadError as err:
                report.unreadable_videos.append(Problem(source, e["id"], f"{path}: {err.reason}", e["id"]))
                if not keep_missing:
                    continue
        kept.append({"id": e["id"], "path": _relative_to_out(path, out_dir), "split": e["split"],
                     "captions": e["captions"], **{k: v for k, v in e.items() if k not in ("id", "split", "captions")}})
    if not kept:
        write_json_atomic(out_dir / "prepare_report.json", report.to_dict())  # the report says why
        where = ""
        if report.missing_videos:
            hint = nested_video_hint(video_dirs)
            where = f"; {looked_in(video_dirs)}" + (f"; {hint}" if hint else "")
        raise ValueError(f"{name}: no clip left to write ({len(entries)} annotated, "
                         f"{len(report.missing_videos)} without a video file, {len(report.unreadable_videos)} "
                         f"unreadable{where}; see {out_dir / 'prepare_report.json'})")
    ann_path = out_dir / "annotations.json"
    write_json_atomic(ann_path, {"name": name, "videos": kept})
    report.annotations = str(ann_path)
    for split in ("train", "val", "test"):
        clips = [e for e in kept if e["split"] == split]
        report.clips[split] = len(clips)
        report.captions[split] = sum(len(e["captions"]) for e in clips)
    write_json_atomic(out_dir / "prepare_report.json", report.to_dict())
    return report


def _msvd_split(vid_number: int) -> Optional[str]:
    for split, lo, hi in MSVD_SPLITS:
        if lo <= vid_number <= hi:
            return split
    return None


def read_youtube_mapping(path: str | os.PathLike, report: PrepareReport) -> dict[str, int]:
    """`youtube_mapping.txt` (`<clip name> vid<N>` per line) -> `{clip name: N}`; bad lines are reported."""
    path = Path(path)
    mapping: dict[str, int] = {}
    taken: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        m = re.fullmatch(r"vid(\d+)", parts[1]) if len(parts) == 2 else None
        if m is None:
            report.malformed.append(Problem(path.name, f"line {lineno}",
                                            f"expected '<clip> vid<N>', got {shorten(line)!r}"))
            continue
        clip, n = parts[0], int(m.group(1))
        if not is_safe_id(clip):
            report.malformed.append(Problem(path.name, f"line {lineno}", f"unsafe clip name {shorten(clip)!r}"))
        elif clip in mapping or n in taken:
            report.malformed.append(Problem(path.name, f"line {lineno}", f"duplicate entry {shorten(line.strip())!r}",
                                            clip))
        else:
            mapping[clip], taken[n] = n, clip
    return mapping


def read_msvd_corpus(path: str | os.PathLike, report: PrepareReport, language: str = "English") -> dict[str, list[str]]:
    """The MSVD corpus CSV -> `{clip name: [normalised captions]}` from the rows in `language`.

    A clip is named `{VideoID}_{Start}_{End}` like its video file. Malformed rows (wrong number of fields,
    non-integer times, an unsafe video id, a description with no word) are reported and skipped.
    """
    path = Path(path)
    captions: dict[str, list[str]] = {}
    other_language = 0
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        first_line = f.readline()
        f.seek(0)
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except csv.Error:  # e.g. a field over the csv module's size limit: not a CSV
            header = None
        if header is None or not set(MSVD_COLUMNS) <= {h.strip() for h in header}:
            got = f"its first line is {shorten(first_line.strip())!r}" if first_line.strip() else "it is empty"
            raise ValueError(f"{path}: not the MSVD corpus CSV (expected the columns {', '.join(MSVD_COLUMNS)}; "
                             f"{got})")
        col = {h.strip(): i for i, h in enumerate(header)}
        start_line = reader.line_num
        for row in _csv_rows(reader, path):
            where = f"line {start_line + 1}" if reader.line_num == start_line + 1 else \
                f"lines {start_line + 1}-{reader.line_num}"
            start_line = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                report.malformed.append(Problem(path.name, where, f"{len(row)} fields, expected {len(header)}"))
                continue
            get = lambda name: row[col[name]].strip()  # noqa: E731
            if get("Language").casefold() != language.casefold():  # `english` rows are English too
                other_language += 1
                continue
            video_id, start, end = get("VideoID"), get("Start"), get("End")
            if not _YOUTUBE_ID.match(video_id):
                report.malformed.append(Problem(path.name, where, f"invalid VideoID {shorten(video_id)!r}"))
                continue
            if not (start.isdigit() and end.isdigit()):
                report.malformed.append(Problem(path.name, where,
                                                f"Start/End not integers ({shorten(start)!r}, {shorten(end)!r})"))
                continue
            clip = f"{video_id}_{int(start)}_{int(end)}"
            text = _caption_text(get("Description"))
            if not text:
                report.malformed.append(Problem(path.name, where, f"empty description "
                                                f"{shorten(get('Description'))!r}", clip))
                continue
            captions.setdefault(clip, []).append(text)
    if other_language:
        report.ignored_rows[f"Language is not {language}"] = other_language
    return captions


def _csv_rows(reader, path: Path):
    """The reader's rows; a row the csv module refuses (a field over its size limit) is one line of error."""
    try:
        yield from reader
    except csv.Error as err:
        raise ValueError(f"{path}: line {reader.line_num}: not readable as CSV ({shorten(str(err))})") from None


def prepare_msvd(corpus_csv: str | os.PathLike, mapping: str | os.PathLike, video_dirs: Sequence[str | os.PathLike],
                 out_dir: str | os.PathLike, keep_missing: bool = False, check_videos: bool = False) -> PrepareReport:
    """MSVD -> `out_dir/annotations.json` (English captions, standard 1,200 / 100 / 670 split).

    Args:
        corpus_csv: `MSR Video Description Corpus.csv`.
        mapping: `youtube_mapping.txt` (clip name -> vidN; N gives the split).
        video_dirs: folders holding the clips, `{VideoID}_{Start}_{End}.avi` (`YouTubeClips/` in the archive).
        out_dir: where `annotations.json` and `prepare_report.json` are written.
        keep_missing: keep clips whose video file is missing or unreadable (they are reported either way).
        check_videos: open every video (container, first frame, frames present: `check_video`) and report those
            that cannot be read: not videos (photos too), broken, or cut off.
    """
    report = PrepareReport("msvd")
    captions = read_msvd_corpus(corpus_csv, report)
    order = read_youtube_mapping(mapping, report)
    if not order:
        lines = [line.strip() for line in Path(mapping).read_text(encoding="utf-8-sig", errors="replace").splitlines()
                 if line.strip()]
        write_json_atomic(Path(out_dir) / "prepare_report.json", report.to_dict())  # every line's problem
        if not lines:
            raise ValueError(f"{mapping}: empty (expected one '<clip> vid<N>' line per clip, e.g. 'abc_1_5 vid1')")
        raise ValueError(f"{mapping}: none of its {len(lines)} lines was understood (expected '<clip> vid<N>', "
                         f"e.g. 'abc_1_5 vid1'; line 1 is {shorten(lines[0])!r})")
    entries = []
    for clip, n in sorted(order.items(), key=lambda kv: kv[1]):
        split = _msvd_split(n)
        if split is None:
            report.skipped_clips.append(Problem(Path(mapping).name, f"vid{n}", "outside the standard split "
                                                f"vid1..vid{MSVD_SPLITS[-1][2]}", clip))
        elif clip not in captions:
            report.skipped_clips.append(Problem(Path(mapping).name, f"vid{n}", "no English caption in the corpus",
                                                clip))
        else:
            entries.append({"id": clip, "split": split, "captions": captions[clip], "vid": f"vid{n}"})
    for clip in sorted(set(captions) - set(order)):
        report.skipped_clips.append(Problem(Path(corpus_csv).name, clip, f"not in {Path(mapping).name}: no split",
                                            clip))
    return _finish(report, "msvd", entries, index_videos(video_dirs), video_dirs, ".avi", Path(out_dir), keep_missing,
                   "videos", check_videos)


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list) \
            or not isinstance(data.get("sentences"), list):
        raise ValueError(f"{path}: expected MSR-VTT's videodatainfo format ('videos' and 'sentences' lists)")
    return data


def _video_number(clip: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", clip)
    return (int(m.group(1)) if m else -1, clip)


def prepare_msrvtt(annotation_files: Sequence[str | os.PathLike], video_dirs: Sequence[str | os.PathLike],
                   out_dir: str | os.PathLike, keep_missing: bool = False, check_videos: bool = False
                   ) -> PrepareReport:
    """MSR-VTT -> `out_dir/annotations.json` with its own split (6,513 / 497 / 2,990; `validate` becomes `val`).

    Args:
        annotation_files: `train_val_videodatainfo.json` and `test_videodatainfo.json` (each: `videos` with
            `video_id` and `split`, `sentences` with `video_id` and `caption`).
        video_dirs: folders holding `video0.mp4` ... `video9999.mp4` (`TrainValVideo/`, `TestVideo/`).
        out_dir, keep_missing, check_videos: as in `prepare_msvd`.
    """
    report = PrepareReport("msrvtt")
    splits: dict[str, str] = {}
    extra: dict[str, dict] = {}
    captions: dict[str, list[str]] = {}
    sentences: list[tuple[str, int, dict]] = []
    for path in map(Path, annotation_files):
        data = _load_json(path)
        for i, v in enumerate(data["videos"]):
            where = f"videos[{i}]"
            vid = v.get("video_id") if isinstance(v, dict) else None
            split = v.get("split") if isinstance(v, dict) else None
            if not isinstance(vid, str) or not is_safe_id(vid):
                report.malformed.append(Problem(path.name, where, f"missing or invalid video_id {shorten(repr(vid))}"))
            elif split not in MSRVTT_SPLITS:
                report.malformed.append(Problem(path.name, where, f"unknown split {shorten(repr(split))}", vid))
            elif vid in splits:
                report.malformed.append(Problem(path.name, where, f"{vid} listed twice", vid))
            else:
                splits[vid] = MSRVTT_SPLITS[split]
                extra[vid] = {k: v[k] for k in ("category",) if k in v}
        sentences += [(path.name, i, s) for i, s in enumerate(data["sentences"])]
    for source, i, s in sentences:
        where = f"sentences[{i}]"
        vid = s.get("video_id") if isinstance(s, dict) else None
        text = s.get("caption") if isinstance(s, dict) else None
        if not isinstance(vid, str) or not isinstance(text, str):
            report.malformed.append(Problem(source, where, "needs a string video_id and caption"))
        elif vid not in splits:
            report.malformed.append(Problem(source, where, f"caption of unknown video {shorten(vid)!r}", vid))
        elif not _caption_text(text):
            report.malformed.append(Problem(source, where, f"empty caption {shorten(text)!r}", vid))
        else:
            captions.setdefault(vid, []).append(_caption_text(text))
    entries = []
    for vid in sorted(splits, key=_video_number):
        if vid not in captions:
            report.skipped_clips.append(Problem("videos", vid, "no caption", vid))
        else:
            entries.append({"id": vid, "split": splits[vid], "captions": captions[vid], **extra[vid]})
    return _finish(report, "msrvtt", entries, index_videos(video_dirs), video_dirs, ".mp4", Path(out_dir),
                   keep_missing, "videos", check_videos, MSRVTT_VIDEO_DIRS)


def first_existing(root: Path, names: Iterable[str]) -> list[Path]:
    found = [root / n for n in names if (root / n).is_dir()]
    return found or [root / next(iter(names))]
