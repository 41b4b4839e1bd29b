"""`captioner info`: what a trained model holds (data, features, sizes, generation, test metrics, in-domain)."""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

PROG = "captioner info"
EXIT_OK, EXIT_USAGE = 0, 2

DESCRIPTION = """\
Tell what a trained captioner holds, in a few lines: its training data and split sizes, the backbone and
frame sampling, the model's sizes, the vocabulary, the generation defaults, the test metrics and the
in-domain threshold with how many clips it rests on. Reads a checkpoint, a run folder (its best
checkpoint) or an exported folder (checking every file), without building the model.

Exit status: 0 told; 2 bad arguments or not a captioner model."""

EPILOG = """\
examples:
  captioner info runs/synthetic
  captioner info exported/msvd --json"""


def build_parser():
    from captioner.cli.parsing import command_parser

    p = command_parser(PROG, DESCRIPTION, EPILOG)
    p.add_argument("model", metavar="CKPT|RUN_DIR|DIR",
                   help="a checkpoint (*.ckpt), a run folder, or a folder written by `captioner export`")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of lines (default: off)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Run `captioner info` with `argv` (default: sys.argv[1:]); returns the exit status."""
    from captioner.cli.parsing import parse

    args = parse(build_parser(), argv)
    from captioner.checkpointing import CheckpointError
    from captioner.errors import UserError
    from captioner.export import describe

    try:
        info = describe(args.model)
    except (CheckpointError, UserError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        print("\n".join(f"{key:11s} {value}" for key, value in lines(info)))
    return EXIT_OK


_METRICS = {"bleu4": "BLEU-4", "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider": "CIDEr-D"}


def lines(info: dict[str, Any]) -> list[tuple[str, str]]:
    """`describe`'s facts as (label, text) lines."""
    spec, arch, g, bb = info["feature_spec"], info["model"], info["generation"], info["backbone"]
    data = info.get("data") or {}
    splits = ", ".join(f"{n} {split}" for split, n in (data.get("splits") or {}).items() if n) or "sizes not recorded"
    source = info.get("source") or {}
    made = f"{source.get('checkpoint')}, epoch {source.get('epoch')}" if source.get("checkpoint") else ""
    pre = bb.get("preprocessing")
    crop = f", frames cropped to {pre['crop_size']} px (short side {pre['resize_size']})" if pre else ""
    size = f", {spec['image_size']} px" if spec.get("image_size") and not pre else ""
    grid = f", {spec['spatial_grid']}x{spec['spatial_grid']} grid" if spec.get("spatial_grid", 1) > 1 else ""
    params = info.get("parameters") or {}
    trained = (params.get("decoder") or 0) + (params.get("temporal") or 0)
    included = {True: ", weights included", False: ", weights named, not included", None: ""}[bb.get("included")]
    backbone = f"; backbone {params['backbone']:,}{included}" if params.get("backbone") else included
    rnn = f" ({arch['temporal_hidden_dim']} hidden)" if arch["temporal"] not in ("mean", "attention") else ""
    out = [
        ("model", f"{info['path']} ({info['kind']}{': ' + made if made else ''})"),
        ("data", f"{data.get('dataset') or 'unrecorded'}: {splits} clips"),
        ("features", f"{spec['backbone']} (weights {spec['weights'] or 'random'}), "
                     f"{spec['num_frames']} frames per clip, "
                     f"{spec.get('seek', 'exact')} sampling{crop}{size}{grid}, CNN in "
                     f"{'bfloat16' if spec.get('precision') == 'bf16' else 'float32'}"),
        ("sizes", f"{arch['temporal']} temporal encoder{rnn}, LSTM decoder {arch['num_layers']} x "
                  f"{arch['hidden_dim']} (words {arch['embed_dim']}), features {arch['feature_dim']}; "
                  f"{trained:,} trained parameters{backbone}"),
        ("vocabulary", f"{info['vocab_size']} words (4 special)"),
        ("generation", f"beam {g['beam_size']}, at most {g['max_len']} words, at least {g['min_len']}, "
                       f"length penalty {g['length_penalty']}, no repeated {g['no_repeat_ngram']}-grams"),
    ]
    metrics = info.get("test_metrics")
    if metrics:
        shown = [f"{label} {metrics[key]:.4f}" for key, label in _METRICS.items() if key in metrics]
        out.append(("test", ", ".join(shown or [f"{k} {v:.4f}" for k, v in list(metrics.items())[:6]])))
    else:
        out.append(("test", "no test metrics found (test_metrics.json beside the checkpoint)"))
    d = info.get("domain")
    if d:
        basis = d["num_held_out"] + d["num_val"]
        out.append(("in domain", f"familiarity >= {d['threshold']:.3f}, calibrated on {basis} clips "
                                 f"({d['num_held_out']} held-out training, {d['num_val']} validation); "
                                 f"{d['prototypes']} prototypes of {d['num_train']} training videos"))
    else:
        out.append(("in domain", "no summary of the training videos (an older checkpoint): no familiarity scores"))
    if info["kind"] == "exported folder":
        total = sum(r["bytes"] for r in info.get("files", {}).values())
        onnx = " (ONNX graphs included)" if "encoder.onnx" in info.get("files", {}) else ""
        out.append(("files", f"{len(info.get('files', {}))} checked, {total / 1e6:.1f} MB{onnx}"))
    return out
