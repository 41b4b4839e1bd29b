"""Temporal encoders: shapes, attention over frames, and sensitivity to frame order."""

import pytest
import torch

from captioner.data.synthetic import direction_report, motion_of_caption
from captioner.models.decoder import CaptionDecoder
from captioner.models.temporal import TEMPORAL_CHOICES, TemporalEncoder

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
