"""Temporal encoders: shapes, attention over frames, and sensitivity to frame order."""

from pathlib import Path

import pytest
import torch

from captioner.config import TEMPORAL_CHOICES
from captioner.data.synthetic import direction_report, motion_of_caption
from captioner.models.decoder import CaptionDecoder
from captioner.models.temporal import TemporalEncoder

B, T, D, V = 3, 5, 12, 10


def build(kind):
    torch.manual_seed(0)
    pool = TemporalEncoder(kind, D, hidden_dim=16, dropout=0.0).eval()
    dec = CaptionDecoder(V, pool.output_dim, embed_dim=8, hidden_dim=16, dropout=0.0, memory_dim=pool.memory_dim)
    return pool, dec.eval()


@pytest.mark.parametrize("kind", TEMPORAL_CHOICES)
def test_shapes_and_generation(kind):
    pool, dec = build(kind)
    feats = torch.randn(B, T, D)
    video, memory = pool.encode(feats)
    assert video.shape == (B, pool.output_dim)
    assert (memory is None) == (not kind.endswith("attention"))
    if memory is not None:
        assert memory.shape == (B, T, pool.memory_dim)
    caps = torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0], [1, 7, 8, 2]])
    assert dec(video, caps[:, :-1], memory).shape == (B, 3, V)
    loss = dec.loss(video, caps, memory)
    loss.backward()
    for name, p in list(pool.named_parameters()) + list(dec.named_parameters()):
        assert p.grad is not None, f"{name} gets no gradient"
    assert dec.greedy(video, 6, memory).shape[0] == B
    assert torch.equal(dec.beam_search(video, 1, 6, 0.0, memory), dec.greedy(video, 6, memory))


@pytest.mark.parametrize("kind", TEMPORAL_CHOICES)
def test_reversing_frames_changes_only_the_temporal_encoders(kind):
    pool, dec = build(kind)
    feats = torch.randn(B, T, D)
    with torch.no_grad():
        fwd, rev = pool(feats), pool(feats.flip(1))
        if kind == "mean":
            assert torch.allclose(fwd, rev, atol=1e-6)
        elif kind == "attention":  # the start vector is the mean; order enters through the attended memory
            assert torch.allclose(fwd, rev, atol=1e-6)
            assert not torch.allclose(pool.encode(feats)[1].flip(1), pool.encode(feats.flip(1))[1])
        else:
            assert not torch.allclose(fwd, rev, atol=1e-4)
        if kind.endswith("attention"):
            video, memory = pool.encode(feats)
            video_r, memory_r = pool.encode(feats.flip(1))
            caps = torch.tensor([[1, 4, 5, 6, 2]] * B)
            # the decoder reads the frames in a different order at each step: different word probabilities
            assert not torch.allclose(dec(video, caps, memory), dec(video_r, caps, memory_r), atol=1e-5)


def test_attention_weights_sum_to_one_and_ignore_padded_frames():
    pool, dec = build("attention")
    feats = torch.randn(B, T, D)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False], [True, False, False, False, False]])
    mem, _ = dec.start(feats.mean(1), feats, mask)
    w = dec.attention_weights(torch.randn(B, 16), mem)
    assert w.shape == (B, T)
    assert torch.allclose(w.sum(-1), torch.ones(B))
    assert (w[~mask] == 0).all() and (w[mask] > 0).all()
    # padded frames' content does not matter
    garbage = feats.clone()
    garbage[~mask] = 1e3
    video, memory = pool.encode(feats, mask)
    video_g, memory_g = pool.encode(garbage, mask)
    caps = torch.tensor([[1, 4, 5, 2]] * B)
    assert torch.allclose(dec(video, caps, memory, mask), dec(video_g, caps, memory_g, mask), atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_encoders_ignore_padded_frames(kind):
    pool, _ = build(kind)
    feats = torch.randn(2, T, D)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    with torch.no_grad():
        full = pool(feats, mask)
        short = pool(feats[1:, :2])
    assert torch.allclose(full[1], short[0], atol=1e-5)


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown temporal encoder"):
        TemporalEncoder("transformer", D)


def test_motion_words_and_direction_report():
    assert motion_of_caption("a red circle moves to the left") == "left"
    assert motion_of_caption("the blue square is getting smaller") == "shrink"
    assert motion_of_caption("a cross is not moving") == "still"
    assert motion_of_caption("a red circle") is None
    assert motion_of_caption("a circle moves up and left") is None  # ambiguous
    hyps = ["a red circle moves left", "a red circle moves left", "a cube is still"]
    refs = [["a red circle moves left"], ["a red circle moves right"], ["a cube is still"]]
    report = direction_report(hyps, refs, ["left", "right", "still"])
    assert report["direction_acc"] == 0.5  # 'still' is not order-dependent: two clips count
    assert 0 < report["dir_bleu1"] < 1


def _checkpoint_hparams(kind: str, num_frames: int) -> dict:
    """The hyperparameters a checkpoint stores, for features of `num_frames` frames of dimension D."""
    from captioner.vocab import Vocabulary

    vocab = Vocabulary.build(["a red circle moves left", "a blue square grows"])
    return dict(vocab=vocab.itos, feature_spec={"backbone": "resnet18", "weights": None, "num_frames": num_frames},
                feature_dim=D, temporal=kind, temporal_hidden_dim=16, embed_dim=8, hidden_dim=16, dropout=0.0)


def _model(hp: dict):
    """The model of a checkpoint's hyperparameters `hp`, as training builds it."""
    from captioner.checkpointing import build_model
    from captioner.config import CaptionerConfig

    return build_model(hp, CaptionerConfig.from_hparams(hp))


@pytest.mark.parametrize("kind", TEMPORAL_CHOICES)
def test_every_kind_trains_and_captions_96_frames(kind):
    """`--data.features.num_frames 96`: the attention kind's positions stopped at 64 whatever the data sampled."""
    torch.manual_seed(0)
    model = _model(_checkpoint_hparams(kind, 96))
    feats, caps = torch.randn(2, 96, D), torch.tensor([[1, 4, 5, 2], [1, 6, 7, 2]])
    video, memory = model.pool.encode(feats)
    loss = model.decoder.loss(video, caps, memory)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.eval().generate(feats, beam_size=2, max_len=5).ids.shape[0] == 2
    if kind == "attention":
        assert model.pool.position.num_embeddings == 96
        assert model.pool.position.weight.grad[95].abs().sum() > 0  # the last frame has a trained position
        with pytest.raises(ValueError, match="97 frames per clip, but this attention encoder has positions for at "
                                             "most 96: sample at most that many"):
            model.generate(torch.randn(1, 97, D))


@pytest.mark.parametrize("num_frames", [8, 64])
def test_checkpoints_from_before_the_frame_count_was_passed_still_load(num_frames):
    """Their attention encoder had 64 positions whatever the data's frame count."""
    hp = _checkpoint_hparams("attention", num_frames)
    old = _model(hp)
    old.pool = TemporalEncoder("attention", D, 16, 0.0, max_frames=64)  # as every checkpoint had it
    model = _model(hp)
    model.load_state_dict(old.state_dict())
    assert model.pool.position.num_embeddings == 64


@pytest.mark.slow
def test_a_training_run_on_96_frames_with_attention(tiny_datamodule_args, tiny_dataset, tmp_path):
    """The data's frame count reaches the temporal encoder through the checkpoint's feature spec."""
    from conftest import tiny_args, with_features

    from captioner.cli.train import train_main
    from captioner.config import FeatureSpec
    from captioner.data.datasets import load_annotations
    from captioner.features.cache import FeatureCache
    from captioner import VideoCaptioner

    data = {**with_features(tiny_datamodule_args, num_frames=96), "features_dir": str(tmp_path / "features")}
    # 96-frame features made from the 4-frame ones (extracting 96 frames a clip would take minutes on a CPU)
    four = FeatureCache(Path(tiny_datamodule_args["features_dir"]) / tiny_dataset.name, FeatureSpec("resnet18", None, 4))
    many = FeatureCache(tmp_path / "features" / tiny_dataset.name, FeatureSpec("resnet18", None, 96))
    for clip in load_annotations(tiny_dataset / "annotations.json"):
        many.save(clip.id, four.load(clip.id).repeat_interleave(24, 0) + 0.01 * torch.randn(96, 1))
    metrics = train_main(tiny_args(data, tmp_path / "run", "--model.temporal=attention", "--trainer.max_epochs=1",
                                   "--model.num_samples=0"))
    assert 0.0 <= metrics["test/bleu4"] <= 1.0
    [best] = (tmp_path / "run").rglob("epoch*-bleu4_*.ckpt")
    model = VideoCaptioner.from_checkpoint(best)
    assert model.spec.num_frames == 96 and model.pool.position.num_embeddings == 96
