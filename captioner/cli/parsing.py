"""The parser convention of every command but `train`: a jsonargparse parser (the one LightningCLI builds for train),
options from `--config` files too, help as written, and usage errors told in one line with exit status 2."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Callable, Optional

from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser, DefaultHelpFormatter, Namespace

EXIT_USAGE = 2
CONFIG_HELP = ("a YAML file of these options, by their long names with _ for - (--print_config prints one); "
               "repeatable, later files and flags win")


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, except that an option whose help already says its default is shown as written (rather
    than with jsonargparse's `(type: ..., default: ...)` added), and a description or epilog of several lines keeps
    its lines (examples stay one to a line)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.help and "default" in action.help:
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def command_parser(prog: str, description: str, epilog: Optional[str] = None, config: bool = True,
                   config_flags: tuple[str, ...] = ("--config",), config_help: str = CONFIG_HELP) -> ArgumentParser:
    """A command's parser: jsonargparse's, raising its `ArgumentError` rather than exiting (`parse` says it in one
    line), without abbreviated options, and with `--config` (and `--print_config`) unless `config` is False."""
    parser = ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter,
                            exit_on_error=False, allow_abbrev=False)
    if config:
        parser.add_argument(*config_flags, action=ActionConfigFile, help=config_help)
    return parser


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An option's type: an integer no smaller than `minimum`; anything else is a one-line usage error."""

    def parse(text: Any) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive_int, non_negative_int = int_at_least(1), int_at_least(0)


def one_line(err: BaseException, parser: Optional[ArgumentParser] = None) -> str:
    """jsonargparse's message, which nests one line per level of the option it names, on one line; with `parser`,
    the options it names by key (`Parser key "beam_size"`, `required: checkpoint`) are named as they are typed."""
    text = " ".join(str(err).split())
    if parser is None:
        return text
    flags = {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}
    text = re.sub(r'Parser key "([^"]+)":', lambda m: f"{flags[m[1]]}:" if m[1] in flags else m[0], text)
    required = "the following arguments are required: "
    if text.startswith(required):
        names = text[len(required):].split(", ")
        text = required + ", ".join(flags.get(name, name) for name in names)
    return text


def parse(parser: ArgumentParser, argv: Optional[list[str]] = None) -> Namespace:
    """`argv` (default: `sys.argv[1:]`) parsed; a usage error prints `<prog>: error: <message>`, one line on
    stderr, and exits with status 2 (as argparse, less its usage lines); `--help` exits with status 0."""
    try:
        return parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except ArgumentError as err:
        print(f"{parser.prog}: error: {one_line(err, parser)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USAGE) from None
