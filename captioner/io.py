"""Files written atomically: a reader or a kill never sees part of one."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import IO, Iterator, Optional


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, temp_name: Optional[str] = None) -> Iterator[Path]:
    """A temporary path next to `path` for the caller to write; renamed to `path` when the block ends cleanly.

    A rename within one folder is atomic: a kill at any moment leaves the old file or the new one, complete. On an
    error the temporary file is deleted and `path` is left as it was; a kill leaves the temporary file, for the
    next write's sweep (`AtomicCheckpointIO`, `features.extract.remove_stale_temp_files`).

    Args:
        temp_name: the temporary file's name in `path`'s folder; default `.<name>.<pid>.tmp` (hidden, and never
            taken for the file itself by a reader globbing the folder).
    """
    path = Path(path)
    tmp = path.with_name(temp_name or f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", fsync: bool = False,
                 temp_name: Optional[str] = None) -> Iterator[IO]:
    """`open(path, mode)` for writing (text in UTF-8), atomically: see `atomic_path`.

    `fsync`: the data is on disk before the name points to it (a power cut cannot leave an empty file in place).
    """
    with atomic_path(path, temp_name) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    with atomic_write(path) as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write `data` as indented UTF-8 JSON to `path` atomically, creating its folder: readers never see part of it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
