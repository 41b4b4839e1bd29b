"""Every command but train parses its options one way (captioner.cli.parsing): jsonargparse, options from --config
files too, help as written, and a usage error in one line with exit status 2."""

import importlib

import pytest

from captioner.cli import COMMANDS as ALL_COMMANDS
from captioner.cli.parsing import command_parser, one_line, parse, positive_int

COMMANDS = [name for name in ALL_COMMANDS if name != "train"]  # a new command follows the convention too


def _parser(command: str):
    return importlib.import_module(f"captioner.cli.{command}").build_parser()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_but_train_uses_the_shared_jsonargparse_parser(command):
    from jsonargparse import ArgumentParser

    from captioner.cli.parsing import HelpFormatter

    parser = _parser(command)
    assert isinstance(parser, ArgumentParser) and parser.formatter_class is HelpFormatter
    assert "--config" in parser.format_help()


@pytest.mark.parametrize("command, argv, message", [
    ("caption", ["clip.mp4"], "the following arguments are required: --checkpoint"),
    ("caption", ["clip.mp4", "-c", "x.ckpt", "--beam-size", "0"], "argument --beam-size: must be at least 1, got 0"),
    ("caption", ["clip.mp4", "-c", "x.ckpt", "--device", "gpu"], "argument --device: invalid choice: 'gpu'"),
    ("caption", ["clip.mp4", "-c", "x.ckpt", "--beam"], "unrecognized arguments: --beam"),  # no abbreviations
    ("evaluate", ["--checkpoint", "x.ckpt", "--split", "tests"], "argument --split: invalid choice: 'tests'"),
    ("evaluate", ["--checkpoint", "x.ckpt", "--no-repeat-ngram", "-1"], "must be at least 0, got -1"),
    ("prepare", [], 'expected "dataset" to be one of {msvd,msrvtt}'),
    ("prepare", ["msvd", "--keep"], "unrecognized arguments: --keep"),
])
def test_a_usage_error_is_one_line_and_exit_2(command, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"captioner.cli.{command}").main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"captioner {command}: error: ") and message in err, err


def test_caption_flags_parse_as_documented(tmp_path):
    parser = _parser("caption")
    args = parse(parser, ["a.mp4", "videos/", "--checkpoint", "m.ckpt", "--beam-size", "1", "--max-length", "12",
                          "--no-repeat-ngram", "0", "--frames", "6", "--no-fast-seek", "--json", "--html", "r.html",
                          "--device", "cpu", "--batch-size", "2", "--threads", "1", "--progress", "-v"])
    assert args.videos == ["a.mp4", "videos/"] and args.checkpoint == "m.ckpt"
    assert (args.beam_size, args.max_length, args.no_repeat_ngram, args.frames) == (1, 12, 0, 6)
    assert (args.fast_seek, args.json, args.html, args.progress, args.verbose) == (False, True, "r.html", True, True)
    default = parse(parser, ["a.mp4", "-c", "m.ckpt"])
    assert (default.fast_seek, default.progress, default.batch_size, default.device) == (None, None, 8, "auto")
    assert parse(parser, ["a.mp4", "-c", "m.ckpt", "--fast-seek", "--no-progress"]).fast_seek is True
    # the same options from a --config file; flags after it win
    config = tmp_path / "caption.yaml"
    config.write_text("checkpoint: runs/synthetic\nbeam_size: 3\nfast_seek: true\n")
    args = parse(parser, ["--config", str(config), "a.mp4", "--beam-size", "2"])
    assert (args.checkpoint, args.beam_size, args.fast_seek, args.videos) == ("runs/synthetic", 2, True, ["a.mp4"])


def test_evaluate_and_prepare_flags_parse_as_documented(tmp_path):
    args = parse(_parser("evaluate"), ["--checkpoint", "runs/x", "--split", "val", "--html", "--no-meteor",
                                       "--tokenizer", "ptb", "--length-penalty", "0.5"])
    assert (args.checkpoint, args.split, args.html, args.no_meteor, args.tokenizer, args.length_penalty) == \
        ("runs/x", "val", True, True, "ptb", 0.5)
    assert parse(_parser("evaluate"), ["--checkpoint", "c", "--html", "r.html"]).html == "r.html"
    cfg = parse(_parser("prepare"), ["msvd", "--root", "r", "--videos", "a", "--videos", "b", "--check-videos"])
    assert cfg.dataset == "msvd" and cfg.msvd.videos == ["a", "b"] and cfg.msvd.check_videos
    cfg = parse(_parser("prepare"), ["msrvtt", "--train-val", "tv.json", "--keep-missing"])
    assert (cfg.msrvtt.root, cfg.msrvtt.train_val, cfg.msrvtt.keep_missing) == ("data/msrvtt", "tv.json", True)


def test_help_says_defaults_once_and_keeps_the_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(_parser("caption"), ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "(default: 8)" in text and "default: 8)" not in text.replace("(default: 8)", "")  # not added twice
    assert "type: <function" not in text
    assert "\n  captioner caption videos/ --checkpoint model.ckpt --json > captions.json\n" in text


def test_one_line_names_options_as_typed():
    parser = command_parser("x", "a command", config=False)
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--num-frames", type=int, required=True)
    with pytest.raises(Exception) as err:
        parser.parse_args(["--num-frames", "many"])
    assert one_line(err.value, parser).startswith("--num-frames: ")
    assert "\n" not in one_line(err.value, parser)
    with pytest.raises(Exception) as err:
        parser.parse_args([])
    assert one_line(err.value, parser) == "the following arguments are required: --num-frames"
