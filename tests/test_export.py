"""Exported folders: export -> load -> caption (offline, in a fresh process), `captioner info`, damaged folders refused
in one line, and captions from ONNX Runtime equal to PyTorch's."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.config import CaptionerConfig, FeatureSpec, GenerationConfig
from captioner.errors import SettingsError
from captioner.export import ExportError, export_checkpoint, load_folder, read_config
from captioner.models.captioner import CaptionModel
from captioner.vocab import SPECIALS, Vocabulary

REPO = Path(__file__).resolve().parents[1]
# a child process that cannot reach the network: every socket connection fails
OFFLINE = ("import socket, sys\n"
           "def refuse(*a, **k): raise OSError('network disabled by the test')\n"
           "socket.socket.connect = refuse; socket.create_connection = refuse\n")


def _run(code: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TORCH_HOME": str(tmp_path / "no-torch-cache"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", OFFLINE + code, *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path)


def _cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    return _run("from captioner.cli import main; sys.exit(main(sys.argv[1:]))", tmp_path, *argv)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    _, root, _ = trained
    onnx = pytest.importorskip("onnx", reason="the ONNX graphs need onnx: pip install -e '.[dev]'") is not None
    return export_checkpoint(root, tmp_path_factory.mktemp("exported") / "tiny", onnx=onnx)


def _test_clips(tiny_dataset: Path) -> list[str]:
    annotations = json.loads((tiny_dataset / "annotations.json").read_text())
    return [str(tiny_dataset / v["path"]) for v in annotations["videos"] if v["split"] == "test"]


def test_the_folder_holds_what_the_issue_lists(exported):
    names = {p.name for p in exported.iterdir()}
    assert {"model.safetensors", "config.json", "vocab.json", "domain.safetensors", "README.md"} <= names
    config = read_config(exported)
    assert config["format_version"] == 1 and config["backbone"]["included"] is True
    assert config["data"]["splits"] == {"train": 16, "val": 5, "test": 4}
    assert config["domain"]["num_held_out"] + config["domain"]["num_val"] == 21
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: captioner\n") and "\n---\n" in card
    assert "BLEU-4" in card and "Outside that domain its captions are unreliable" in card
    assert "from_pretrained" in card


@pytest.mark.slow
def test_captions_from_the_folder_equal_the_checkpoints_offline_in_a_fresh_process(trained, exported, tiny_dataset,
                                                                                   real_clips, tmp_path):
    """No network, no torch hub cache: the backbone's weights come from the folder; captions equal, test split and a
    real clip."""
    from captioner.api import VideoCaptioner

    _, _, best = trained
    videos = _test_clips(tiny_dataset) + [str(real_clips[0])]
    expected = [c.text for c in VideoCaptioner.from_checkpoint(best).caption(videos, with_scores=True)]
    code = ("import json; from captioner.api import VideoCaptioner\n"
            "m = VideoCaptioner.from_pretrained(sys.argv[1])\n"
            "print(json.dumps(m.caption(sys.argv[2:])))")
    proc = _run(code, tmp_path, str(exported), *videos)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == expected
    assert not (tmp_path / "no-torch-cache").exists()  # nothing fetched


@pytest.mark.slow
def test_caption_command_takes_an_exported_folder(trained, exported, tiny_dataset, tmp_path):
    from captioner.api import VideoCaptioner

    _, _, best = trained
    videos = _test_clips(tiny_dataset)
    expected = VideoCaptioner.from_checkpoint(best).caption(videos)
    proc = _cli(tmp_path, "caption", *videos, "--checkpoint", str(exported), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["caption"] for r in json.loads(proc.stdout)] == expected


def test_save_pretrained_round_trip(trained, tmp_path):
    from captioner.api import VideoCaptioner

    _, _, best = trained
    model = VideoCaptioner.from_checkpoint(best)
    model.save_pretrained(tmp_path / "saved")
    again = VideoCaptioner.from_pretrained(tmp_path / "saved")
    feats = torch.randn(3, 4, model.config.feature_dim)
    assert again.caption_features(feats, with_scores=True) == model.caption_features(feats, with_scores=True)
    assert isinstance(again, VideoCaptioner) and again.domain.threshold == model.domain.threshold
    # the CNN's precision travels: a bf16 model's folder computes its features in bf16 again (and float32 stays)
    import dataclasses

    for precision in ("bf16", "32"):
        model.spec = dataclasses.replace(model.spec, precision=precision)
        model.encoder.precision = precision
        model.save_pretrained(tmp_path / precision)
        again = VideoCaptioner.from_pretrained(tmp_path / precision)
        assert again.spec.precision == again.encoder.precision == precision


@pytest.mark.slow
def test_info_tells_what_a_model_holds(trained, exported, tmp_path):
    from captioner.cli.info import main

    _, root, _ = trained
    for target in (root, exported):
        proc = _cli(tmp_path, "info", str(target))
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout
        assert "synthetic: 16 train, 5 val, 4 test clips" in text
        assert "resnet18 (weights random), 4 frames per clip" in text
        assert "calibrated on 21 clips (16 held-out training, 5 validation)" in text
        assert "BLEU-4" in text and "beam 2" in text
    proc = _cli(tmp_path, "info", str(exported), "--json")
    info = json.loads(proc.stdout)
    assert info["kind"] == "exported folder"
    assert info["vocab_size"] == len(json.loads((exported / "vocab.json").read_text()))
    assert info["parameters"]["decoder"] > 0 and info["test_metrics"]["bleu4"] >= 0
    assert main([str(tmp_path / "nothing here")]) == 2


def _damaged(exported: Path, tmp_path: Path, how: str) -> Path:
    bad = tmp_path / how
    shutil.copytree(exported, bad)
    config = json.loads((bad / "config.json").read_text())
    if how == "missing":
        (bad / "vocab.json").unlink()
    elif how == "altered":
        data = bytearray((bad / "model.safetensors").read_bytes())
        data[-5] ^= 0x55  # a weight's byte: the size stays, the hash does not
        (bad / "model.safetensors").write_bytes(bytes(data))
    elif how == "version":
        config["format_version"] = 99
    elif how == "vocab":  # a vocabulary of another model, recorded consistently: only the weights can tell
        words = json.loads((bad / "vocab.json").read_text())[:-1]
        (bad / "vocab.json").write_text(json.dumps(words))
        config["vocab_size"] = len(words)
        import hashlib

        raw = (bad / "vocab.json").read_bytes()
        config["files"]["vocab.json"] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    (bad / "config.json").write_text(json.dumps(config))
    return bad


@pytest.mark.parametrize("how, names", [("missing", "vocab.json: missing"),
                                        ("altered", "model.safetensors: its SHA-256"),
                                        ("version", "config.json: format version 99"),
                                        ("vocab", "vocab.json: 51 words, but the weights")])
def test_a_damaged_folder_is_refused_in_one_line(exported, tmp_path, how, names):
    bad = _damaged(exported, tmp_path, how)
    with pytest.raises(ExportError, match=names.replace("(", r"\(")):
        load_folder(bad)


@pytest.mark.slow
def test_a_damaged_folder_is_one_line_and_exit_2_on_the_command_line(exported, tiny_mp4, tmp_path):
    for how in ("missing", "altered", "version", "vocab"):
        bad = _damaged(exported, tmp_path, how)
        proc = _cli(tmp_path, "caption", str(tiny_mp4), "--checkpoint", str(bad))
        assert proc.returncode == 2, (how, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in proc.stderr, (how, proc.stderr)


def test_export_refuses_a_folder_of_other_files(trained, tmp_path):
    _, root, _ = trained
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an exported captioner"):
        export_checkpoint(root, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# ----------------------------------------------------------------------------------------------- ONNX


def _random_model(temporal: str = "mean") -> CaptionModel:
    """A decoder of random, flattened output weights: long captions with many repeats for the rules to block."""
    torch.manual_seed(0)
    vocab = Vocabulary(list(SPECIALS) + [f"w{i}" for i in range(40)])
    model = CaptionModel.from_config(CaptionerConfig(feature_dim=24, embed_dim=16, hidden_dim=32, num_layers=2,
                                                     temporal=temporal, dropout=0.0), vocab,
                                     FeatureSpec(backbone="resnet18", weights=None, num_frames=4))
    model.decoder.out.weight.data *= 0.3
    return model.eval()


@pytest.mark.parametrize("g", [GenerationConfig(beam_size=1), GenerationConfig(beam_size=3),
                               GenerationConfig(beam_size=4, no_repeat_ngram=2, min_len=5, max_len=12),
                               GenerationConfig(beam_size=5, length_penalty=1.0),
                               GenerationConfig(beam_size=1, no_repeat_ngram=0, min_len=3)])
def test_the_numpy_search_follows_the_decoders_rules(g):
    """The search `--runtime onnx` runs (NumPy), over the exported step's PyTorch twin, gives the decoder's own
    captions: greedy and beam, n-gram blocking, minimum length, length penalty."""
    from captioner.onnx_export import StartGraph, StepGraph
    from captioner.onnx_runtime import beam_search, greedy_search

    model = _random_model()
    step_graph, start_graph = StepGraph(model).eval(), StartGraph(model).eval()

    def step(tokens, h, c, video):
        with torch.no_grad():
            out = step_graph(*map(torch.from_numpy, (tokens, h, c, video)))
        return tuple(x.numpy() for x in out)

    feats = torch.randn(16, 4, 24)
    with torch.no_grad():
        ids, scores, video = model.generate(feats, generation=g)
        h, c = start_graph(video)
    search = greedy_search if g.beam_size == 1 else beam_search
    found, found_scores = search(step, video.numpy(), h.numpy(), c.numpy(), g, model.vocab)
    expected = [model.vocab.decode(row) for row in ids]
    got = [model.vocab.decode(row.tolist()) for row in found]
    assert sum(a == b for a, b in zip(expected, got)) >= 15, list(zip(expected, got))  # a float tie may flip one
    assert all(len(t.split()) >= max(g.min_len, 1) for t in got)
    assert np.allclose(found_scores, scores.numpy(), atol=1e-4) or g.length_penalty


def test_attention_models_are_refused_for_onnx_in_one_line():
    from captioner.onnx_export import check_exportable

    with pytest.raises(SettingsError, match="without attention .* 'attention'"):
        check_exportable(_random_model("attention"))


@pytest.mark.slow
def test_onnx_runtime_captions_equal_pytorchs(trained, exported, tiny_dataset):
    pytest.importorskip("onnxruntime", reason="--runtime onnx needs onnxruntime: pip install -e '.[dev]'")
    from captioner.api import VideoCaptioner
    from captioner.onnx_runtime import OnnxCaptioner

    _, _, best = trained
    videos = sorted(str(p) for p in (tiny_dataset / "videos").glob("*.mp4"))  # all 25 clips, the test split's included
    torch_model, onnx_model = VideoCaptioner.from_checkpoint(best), OnnxCaptioner(exported)
    for beam in (1, 2):
        expected = torch_model.caption(videos, with_scores=True, beam_size=beam)
        got = onnx_model.caption(videos, with_scores=True, beam_size=beam)
        same = sum(a.text == b.text for a, b in zip(expected, got))
        assert same >= 0.99 * len(videos), [(a, b) for a, b in zip(expected, got) if a.text != b.text]
        assert all(b.text for b in got)
        assert [b.familiarity for b in got] == pytest.approx([a.familiarity for a in expected], abs=2e-4)


@pytest.mark.slow
def test_caption_command_with_onnx_runtime(trained, exported, tiny_dataset, tmp_path):
    pytest.importorskip("onnxruntime", reason="--runtime onnx needs onnxruntime: pip install -e '.[dev]'")
    from captioner.api import VideoCaptioner

    _, _, best = trained
    videos = _test_clips(tiny_dataset)
    expected = VideoCaptioner.from_checkpoint(best).caption(videos)
    proc = _cli(tmp_path, "caption", *videos, "--checkpoint", str(exported), "--runtime", "onnx", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["caption"] for r in json.loads(proc.stdout)] == expected
    no_onnx = tmp_path / "no-onnx"
    shutil.copytree(exported, no_onnx)
    config = json.loads((no_onnx / "config.json").read_text())
    for name in ("encoder.onnx", "decoder_start.onnx", "decoder_step.onnx"):
        config["files"].pop(name, None)
        (no_onnx / name).unlink(missing_ok=True)
    (no_onnx / "config.json").write_text(json.dumps(config))
    proc = _cli(tmp_path, "caption", videos[0], "--checkpoint", str(no_onnx), "--runtime", "onnx")
    assert proc.returncode == 2 and "export it with" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_onnx_latency_benchmark_smoke(single_thread, capsys):
    pytest.importorskip("onnxruntime", reason="the benchmark compares ONNX Runtime: pip install -e '.[dev]'")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from onnx_latency import main

    assert main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "caption one clip, ONNX Runtime" in out and "x PyTorch's speed" in out and "same captions: 2/2" in out
