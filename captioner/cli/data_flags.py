"""The `data:` section on the command line, shared by `captioner train` and `captioner extract`: old spellings of
the feature settings named in one line, and nulls given to `--data.features.*` passed on as nulls."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

from captioner.config import FeatureSpec

CONFIG_FLAGS = ("--config", "-c")


def renamed_data_flag(args: list[str]) -> Optional[str]:
    """One line naming the new flag when `args` spell a feature setting the old way: training's flat
    `--data.num_frames` (now `--data.features.num_frames`), `captioner extract`'s `--num-frames`, `--fast-seek`,
    `--data-dir`; `None` when they don't."""
    for arg in args:
        flag = arg.split("=", 1)[0]
        for field in dataclasses.fields(FeatureSpec):
            if flag in (f"--{field.name.replace('_', '-')}", f"--data.{field.name}"):
                return (f"{flag} is now --data.features.{field.name} (the feature settings are one data.features "
                        f"section)")
        if flag in ("--fast-seek", "--no-fast-seek"):
            return f"{flag} is now --data.features.seek {'exact' if flag.startswith('--no') else 'keyframe'}"
        if flag in ("--data-dir", "--features-dir"):
            return f"{flag} is now --data.{flag[2:].replace('-', '_')}, as in training"
    return None


def spell_feature_nulls(args: list[str]) -> list[str]:
    """`args` with each `--data.features.<field> null` given as `--data.features {"<field>": null}` instead.

    jsonargparse (4.53) hands a field of a dataclass inside a subclass's arguments on as text, so a null arrives as
    "None" (refused as an int, taken as a weights name); the same setting as a JSON object merges with the others.
    """
    prefix, out, i = "--data.features.", [], 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        taken = 2 if flag.startswith(prefix) and not eq and i + 1 < len(args) else 1
        value = args[i + 1] if taken == 2 else value
        if flag.startswith(prefix) and taken + bool(eq) == 2 and value in ("null", "Null", "NULL", "~"):
            out += ["--data.features", f'{{"{flag[len(prefix):]}": null}}']
        else:
            out += args[i:i + taken]
        i += taken
    return out


def config_paths(args: Sequence[str], given: bool = False) -> list[str]:
    """The config files `args` name (`--config F`, `-c F`, `--config=F`); with `given`, also a flag missing its file
    (as an empty name), so that the caller leaves the parser to say so."""
    paths = [args[i + 1] if i + 1 < len(args) else "" for i, a in enumerate(args) if a in CONFIG_FLAGS]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    return paths if given else [p for p in paths if p]


def renamed_config_key(args: Sequence[str]) -> Optional[str]:
    """One line naming the new key when a `--config` file in `args` sets a feature setting the old, flat way
    (`data: {num_frames: 16}`, now `data: {features: {num_frames: 16}}`); `None` when none does (or a file cannot be
    read: the parser says so then)."""
    import yaml

    paths = config_paths(args)
    fields = [f.name for f in dataclasses.fields(FeatureSpec)]
    for path in paths:
        try:
            cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        data = cfg.get("data") if isinstance(cfg, dict) else None
        data = data.get("init_args", data) if isinstance(data, dict) else None
        old = [k for k in fields if isinstance(data, dict) and k in data]
        if old:
            return (f"{path}: data.{old[0]} is now data.features.{old[0]} (the feature settings are one "
                    f"data.features section: features: {{{old[0]}: ...}} under data)")
    return None
