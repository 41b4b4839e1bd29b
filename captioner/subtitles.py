"""Timed captions as subtitle files: SubRip (`.srt`) and WebVTT (`.vtt`, what an HTML5 `<track>` plays)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Union

from captioner.io import write_text_atomic

PathLike = Union[str, os.PathLike]
Cue = tuple[float, float, str]  # start, end (seconds), text


def timestamp(seconds: float, separator: str = ".") -> str:
    """`HH:MM:SS.mmm` (WebVTT; SubRip's separator is `,`), rounded to the millisecond."""
    ms = max(0, int(round(seconds * 1000)))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def _clean(text: Optional[str]) -> str:
    """One line of cue text: a blank line would end the cue, and `-->` would start another in WebVTT."""
    return " ".join((text or "").split()).replace("-->", "->")


def _cues(cues: Iterable[Cue]) -> list[Cue]:
    """Cues with text, each ending after it starts (a player drops a cue of no length)."""
    out = []
    for start, end, text in cues:
        text = _clean(text)
        if text:
            out.append((start, max(end, start + 0.001), text))
    return out


def srt_text(cues: Iterable[Cue]) -> str:
    """SubRip: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, a blank line after each."""
    return "".join(f"{n}\n{timestamp(a, ',')} --> {timestamp(b, ',')}\n{text}\n\n"
                   for n, (a, b, text) in enumerate(_cues(cues), 1))


def vtt_text(cues: Iterable[Cue]) -> str:
    """WebVTT: the `WEBVTT` header, then cues `HH:MM:SS.mmm --> HH:MM:SS.mmm` (`&`, `<`, `>` escaped)."""
    escape = lambda t: t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
    return "WEBVTT\n\n" + "".join(f"{n}\n{timestamp(a)} --> {timestamp(b)}\n{escape(text)}\n\n"
                                  for n, (a, b, text) in enumerate(_cues(cues), 1))


def write_subtitles(path: PathLike, cues: Iterable[Cue], kind: Optional[str] = None) -> Path:
    """Write `cues` to `path` atomically as SubRip or WebVTT (`kind` "srt"/"vtt"; default: from the suffix)."""
    path = Path(path)
    kind = kind or path.suffix.lower().lstrip(".")
    if kind not in ("srt", "vtt"):
        raise ValueError(f"{path}: subtitles are .srt or .vtt, not {path.suffix or 'no suffix'}")
    write_text_atomic(path, srt_text(cues) if kind == "srt" else vtt_text(cues))
    return path
