"""Mixed precision: generation under any autocast gives the float32 captions; a bf16-mixed Trainer run end to end."""

import csv

import pytest
import torch

from captioner.config import TEMPORAL_CHOICES, FeatureSpec
from captioner import VideoCaptioner
from captioner.models.decoder import CaptionDecoder
from captioner.models.temporal import TemporalEncoder
from captioner.vocab import Vocabulary

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
B, T, D = 6, 5, 12


def tiny_captioner(kind: str, num_layers: int = 1, feature_dim: int = D) -> VideoCaptioner:
    torch.manual_seed(0)
    vocab = Vocabulary.build(["a red circle moves left", "a blue square moves right", "a green star grows fast"])
    pool = TemporalEncoder(kind, feature_dim, hidden_dim=16, dropout=0.0)
    dec = CaptionDecoder(len(vocab), pool.output_dim, embed_dim=8, hidden_dim=16, num_layers=num_layers,
                         dropout=0.0, memory_dim=pool.memory_dim)
    return VideoCaptioner(vocab, dec, FeatureSpec("resnet18", None, T), pool).eval()


def captions_under(model: VideoCaptioner, feats: torch.Tensor, device: str, dtype) -> dict:
    """Greedy and beam token ids for features encoded outside autocast, generated inside it (and without)."""
    with torch.no_grad():
        video, memory = model.pool.encode(feats)
    out = {}
    with torch.autocast(device, dtype, enabled=dtype is not None):
        out["greedy"] = model.decoder.greedy(video, 8, memory)
        out["beam"] = model.decoder.beam_search(video, 3, 8, 0.0, memory)
        out["beam_lp"] = model.decoder.beam_search(video, 3, 8, 1.0, memory=memory)  # memory passed by keyword
        out["generate"] = model.generate(feats, beam_size=3, max_len=8).ids  # the temporal encoder under autocast too
    return out


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("kind", TEMPORAL_CHOICES)
def test_generation_under_cpu_bf16_autocast_gives_the_fp32_captions(kind, num_layers):
    model = tiny_captioner(kind, num_layers)
    feats = torch.randn(B, T, D)
    fp32 = captions_under(model, feats, "cpu", None)
    bf16 = captions_under(model, feats, "cpu", torch.bfloat16)  # crashed: addmm_ BFloat16 vs Float
    for name in ("greedy", "beam", "beam_lp"):
        assert torch.equal(bf16[name], fp32[name]), name
    if kind in ("mean", "attention"):  # no recurrent layer over the frames: the same video vector and memory
        assert torch.equal(bf16["generate"], fp32["generate"])
    else:
        assert bf16["generate"].shape[0] == B


@pytest.mark.parametrize("kind", TEMPORAL_CHOICES)
def test_teacher_forced_loss_under_cpu_bf16_autocast_is_finite_and_trains_everything(kind):
    model = tiny_captioner(kind).train()
    feats, caps = torch.randn(B, T, D), torch.tensor([[1, 4, 5, 6, 2, 0]] * B)
    with torch.autocast("cpu", torch.bfloat16):
        video, memory = model.pool.encode(feats)
        loss = model.decoder.loss(video, caps, memory)
    loss.backward()
    assert torch.isfinite(loss)
    with torch.no_grad():
        ref = model.decoder.loss(model.pool(feats), caps, model.pool.encode(feats)[1])
    assert loss.item() == pytest.approx(ref.item(), rel=0.05)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.slow
def test_caption_frames_under_autocast():
    """A user's own `with torch.autocast(...)` around the library's captioning calls (the CNN runs in bf16)."""
    model = tiny_captioner("mean", feature_dim=512)  # random-weight ResNet-18 features
    frames = torch.randint(0, 256, (2, T, 40, 40, 3), dtype=torch.uint8)
    with torch.autocast("cpu", torch.bfloat16):
        got = model.caption_frames(frames, beam_size=2) + model.caption_frames(frames[0], beam_size=1)
    assert len(got) == 3 and all(isinstance(c, str) for c in got)


def _metrics_csv_keys(root) -> set:
    keys = set()
    for path in root.rglob("metrics.csv"):
        with path.open() as f:
            for row in csv.DictReader(f):
                keys |= {k for k, v in row.items() if v}
    return keys


def _precision_run(tiny_datamodule_args, root, precision: str, accelerator: str):
    from conftest import tiny_args

    from captioner.cli.train import train_main

    metrics = train_main(tiny_args(tiny_datamodule_args, root, f"--trainer.precision={precision}",
                                   f"--trainer.accelerator={accelerator}", "--trainer.devices=1",
                                   "--trainer.max_epochs=2", "--model.num_samples=0"))
    assert 0.0 <= metrics["test/bleu4"] <= 1.0  # the test ran under the same precision
    assert {"val/bleu4", "train/loss"} <= _metrics_csv_keys(root)  # sanity validation and validation epochs ran
    [best] = root.rglob("epoch*-bleu4_*.ckpt")
    return best


def _same_captions_with_and_without_autocast(best, tiny_datamodule_args, tiny_dataset, device: str, dtype):
    from pathlib import Path

    from captioner.data.datasets import load_annotations
    from captioner.features.cache import FeatureCache

    model = VideoCaptioner.from_checkpoint(best, map_location=device)
    cache = FeatureCache(Path(tiny_datamodule_args["features_dir"]) / tiny_dataset.name, model.spec)
    feats = torch.stack([cache.load(c.id) for c in load_annotations(tiny_dataset / "annotations.json")])
    expected = model.caption_features(feats), model.caption_features(feats, beam_size=1)
    with torch.autocast(device, dtype):
        assert (model.caption_features(feats), model.caption_features(feats, beam_size=1)) == expected


@pytest.mark.slow
def test_bf16_mixed_training_run_on_cpu_fits_validates_and_tests(tiny_datamodule_args, tiny_dataset, tmp_path):
    """`--trainer.precision bf16-mixed` (the cluster config) stopped in the sanity validation."""
    best = _precision_run(tiny_datamodule_args, tmp_path / "run", "bf16-mixed", "cpu")
    _same_captions_with_and_without_autocast(best, tiny_datamodule_args, tiny_dataset, "cpu", torch.bfloat16)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", TEMPORAL_CHOICES)
def test_generation_under_cuda_autocast_gives_the_fp32_captions(kind, dtype):
    model = tiny_captioner(kind, 2).cuda()
    feats = torch.randn(B, T, D, device="cuda")
    fp32 = captions_under(model, feats, "cuda", None)
    low = captions_under(model, feats, "cuda", dtype)
    for name in ("greedy", "beam", "beam_lp"):
        assert torch.equal(low[name], fp32[name]), name


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)])
def test_mixed_precision_training_run_on_cuda(precision, dtype, tiny_datamodule_args, tiny_dataset, tmp_path):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    best = _precision_run(tiny_datamodule_args, tmp_path / "run", precision, "gpu")
    _same_captions_with_and_without_autocast(best, tiny_datamodule_args, tiny_dataset, "cuda", dtype)
