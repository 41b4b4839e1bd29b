"""`CaptionModel`, the pure model: the frames it accepts (one clear error for those it does not), its generation
settings (`GenerationConfig`, merged once), and no file, video or checkpoint room behind it."""

import numpy as np
import pytest
import torch

from captioner.config import FeatureSpec
from captioner.models.captioner import CaptionModel, as_frames
from captioner.models.decoder import CaptionDecoder
from captioner.vocab import Vocabulary


@pytest.fixture(scope="module")
def model() -> CaptionModel:
    torch.manual_seed(0)
    vocab = Vocabulary.build(["a red circle moves left", "a blue square moves right"])
    decoder = CaptionDecoder(len(vocab), 512, embed_dim=8, hidden_dim=16, dropout=0.0)  # random-weight ResNet-18
    return CaptionModel(vocab, decoder, FeatureSpec("resnet18", None, 4)).eval()


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return torch.randint(0, 256, (2, 4, 40, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_numpy_frames_are_captioned_as_the_same_tensor(model, frames):
    expected = model.caption_frames(frames, beam_size=2)
    assert model.caption_frames(frames.numpy(), beam_size=2) == expected  # was AttributeError: no .dim()
    assert model.caption_frames(frames[1].numpy(), beam_size=2) == expected[1:]
    assert model.caption_frames([c.numpy() for c in frames], beam_size=2) == expected  # a list of clips
    assert model.caption_frames((frames[0], frames[1][:, :20]), beam_size=2)[0] == expected[0]  # sizes may differ
    # a view numpy cannot hand over as is (negative strides) and a read-only array
    flipped = frames.numpy()[:, :, :, ::-1]
    assert model.caption_frames(flipped, beam_size=2) == model.caption_frames(frames.flip(3), beam_size=2)
    frozen = frames.numpy().copy()
    frozen.flags.writeable = False
    assert model.caption_frames(frozen, beam_size=2) == expected
    assert model.caption_frames([], beam_size=2) == []


@pytest.mark.parametrize("make, message", [
    (lambda f: f.float() / 255, r"frames: got torch.float32 \(2, 4, 40, 48, 3\); expected uint8 RGB frames "
                                r"\(T, H, W, 3\) or \(B, T, H, W, 3\): values in \[0, 1\]: convert with "
                                r"\(x \* 255\).round\(\).to\(torch.uint8\)"),
    (lambda f: f.float(), r"got torch.float32 .*: convert with x.round\(\).clamp\(0, 255\).to\(torch.uint8\)"),
    (lambda f: f.numpy().astype(np.float32) / 255, r"got a numpy array of float32 \(2, 4, 40, 48, 3\).*: values in "
                                                   r"\[0, 1\]: convert with \(x \* 255\).round\(\).astype\(np.uint8\)"),
    (lambda f: f.long(), r"got torch.int64 .*convert with x.clamp\(0, 255\).to\(torch.uint8\)"),
    (lambda f: f[0].permute(0, 3, 1, 2), r"got torch.uint8 \(4, 3, 40, 48\).*: channels come first; move them last "
                                         r"with x.permute\(0, 2, 3, 1\)"),
    (lambda f: f.permute(0, 1, 4, 2, 3).numpy(), r"channels come first; move them last with "
                                                 r"x.transpose\(0, 1, 3, 4, 2\)"),
    (lambda f: f[..., :1], r"\(2, 4, 40, 48, 1\).*grey frames"),
    (lambda f: torch.cat([f, f[..., :1]], -1), r"RGBA frames: drop alpha with x\[..., :3\]"),
    (lambda f: f[0, 0], r"frames: got torch.uint8 \(40, 48, 3\); expected uint8 RGB frames \(T, H, W, 3\) or "
                        r"\(B, T, H, W, 3\)$"),
    (lambda f: f[:, :0], r"it holds no frame"),
    (lambda f: f.tolist(), r"clip 0: got a list; expected a uint8 tensor or numpy array of RGB frames \(T, H, W, 3\)"),
])
def test_bad_frames_are_one_clear_error(model, frames, make, message):
    with pytest.raises(ValueError, match=message):
        model.caption_frames(make(frames))


def test_bad_clips_are_one_clear_error(model, frames):
    with pytest.raises(ValueError, match=r"clip 1: got torch.float32 \(4, 40, 48, 3\); expected uint8 RGB frames "
                                         r"\(T, H, W, 3\): values in \[0, 1\]"):
        model.caption_frames([frames[0], frames[1].float() / 255])
    with pytest.raises(ValueError, match=r"clip 0: got torch.uint8 \(2, 4, 40, 48, 3\); expected .* \(T, H, W, 3\)$"):
        model.caption_frames([frames])
    with pytest.raises(ValueError, match=r"the clips have different frame counts \(3, 4\): sample the same number"):
        model.caption_frames([frames[0], frames[1, :3]])


def test_as_frames_hands_uint8_frames_over_without_a_copy(frames):
    assert as_frames(frames) is frames
    array = frames.numpy()
    assert as_frames(array).data_ptr() == array.ctypes.data
    with pytest.raises(ValueError, match=r"expected uint8 RGB frames \(B, T, H, W, 3\)$"):
        as_frames(frames[0], batched=True)


# ---------------------------------------------------------------------------------------------------------------
# The typed architecture (CaptionerConfig), the model's own API, and checkpoints


def test_clips_are_encoded_by_the_frame_encoders_one_core(model, frames):
    """`caption_frames` = `encoder.encode_clips`, then `caption_features`: the features training cached."""
    feats = model.encoder.encode_clips(list(frames))
    assert feats.shape == (2, 4, 512)
    assert model.caption_frames(list(frames), beam_size=2) == model.caption_features(feats, beam_size=2)


def test_config_defaults_are_the_training_systems_and_fill_an_older_checkpoints_gaps():
    import inspect

    from captioner.config import CaptionerConfig
    from captioner.systems.captioning import CaptioningSystem

    params = inspect.signature(CaptioningSystem.__init__).parameters
    defaults = CaptionerConfig(feature_dim=7)
    for name, value in defaults.to_dict().items():
        if name != "feature_dim":
            assert params[name].default == value, name
    # a checkpoint written before the temporal encoders existed: no temporal, no temporal_hidden_dim
    old = CaptionerConfig.from_hparams({"feature_dim": "7", "embed_dim": 8, "hidden_dim": 16, "lr": 0.1})
    assert old == CaptionerConfig(feature_dim=7, embed_dim=8, hidden_dim=16, temporal="mean")
    with pytest.raises(TypeError):
        CaptionerConfig(feature_dim=7, layers=2)


def test_loss_sample_and_greedy_are_the_decoders_on_the_encoded_video():
    from captioner.config import CaptionerConfig

    vocab = Vocabulary.build(["a red circle moves left", "a blue square moves right"])
    config = CaptionerConfig(feature_dim=6, embed_dim=8, hidden_dim=16, temporal="lstm_attention",
                             temporal_hidden_dim=12, dropout=0.0)
    torch.manual_seed(0)
    model = CaptionModel.from_config(config, vocab, FeatureSpec("resnet18", None, 3))
    assert model.config == config and not model.video_is_frame_mean
    feats, caps = torch.randn(2, 3, 6), torch.tensor([[1, 4, 5, 2], [1, 6, 7, 2]])
    video, memory = model.encode_video(feats)
    assert video.shape == (2, 12) and memory.shape == (2, 3, 12)
    assert torch.equal(model.loss(feats, caps), model.decoder.loss(video, caps, memory))
    torch.manual_seed(1)
    ids, logp = model.sample((video, memory), 3, max_len=5)
    assert ids.shape[0] == 6 and logp.requires_grad
    model.train()
    greedy = model.greedy((video, memory), max_len=5)
    assert model.decoder.training  # back in its mode
    assert torch.equal(greedy, model.eval().decoder.greedy(video, 5, memory))
    assert torch.equal(model.video_vectors(feats), video)


def test_a_checkpoint_without_the_typed_config_is_refused_in_one_line(trained, tmp_path):
    """Checkpoints of the old layout (the architecture only in flat hyperparameters) are not read any more."""
    from captioner.checkpointing import CheckpointError, load_model, read_checkpoint
    from captioner.config import CONFIG_KEY

    ckpt = torch.load(trained[2], weights_only=True)
    old = tmp_path / "old.ckpt"
    torch.save({k: v for k, v in ckpt.items() if k != CONFIG_KEY}, old)
    with pytest.raises(CheckpointError, match=rf"^{old}: not a captioner checkpoint of this version \(no {CONFIG_KEY}"):
        load_model(read_checkpoint(old), old)
    model = load_model(read_checkpoint(trained[2]), trained[2])
    assert type(model) is CaptionModel and model.generation.beam_size == ckpt["hyper_parameters"]["beam_size"]


# ---------------------------------------------------------------------------------------------------------------
# Generation settings: every default in GenerationConfig, a caller's overrides merged once


def test_generation_config_merges_overrides_once():
    from captioner.config import GENERATION, GenerationConfig
    from captioner.errors import SettingsError

    stored = GenerationConfig(beam_size=2, max_len=12)
    merged = stored.merged(beam_size=1, max_len=None, length_penalty=None)
    assert merged == GenerationConfig(beam_size=1, max_len=12)  # None keeps the stored value
    assert stored == GenerationConfig(beam_size=2, max_len=12)  # frozen: the stored settings are untouched
    assert stored.merged() == stored
    with pytest.raises(TypeError, match="unknown generation setting\\(s\\): beam, max_length"):
        stored.merged(beam=3, max_length=4)
    with pytest.raises(SettingsError, match="beam_size must be a whole number of at least 1, got 0"):
        stored.merged(beam_size=0)
    assert GenerationConfig.from_hparams({"beam_size": 3, "max_len": None, "lr": 0.1}) == GenerationConfig(beam_size=3)
    assert GENERATION == GenerationConfig()


def test_the_model_generates_with_its_settings_unless_a_call_overrides_them(model):
    from captioner.config import GenerationConfig

    feats = torch.randn(3, 4, 512, generator=torch.Generator().manual_seed(1))
    greedy = model.decoder.greedy(model.encode_video(feats)[0], 2, no_repeat_ngram=3)
    model.generation = GenerationConfig(beam_size=1, max_len=2)
    try:
        out = model.generate(feats)
        assert torch.equal(out.ids, greedy) and out.ids.shape[1] <= 2 and out.scores.shape == (3,)
        assert out.video.shape == (3, 512)
        assert model.generate(feats, max_len=1).ids.shape[1] == 1  # an override replaces the stored value
        assert model.caption_features(feats) == [model.vocab.decode(r) for r in greedy]
        assert model.caption_features(feats, generation=GenerationConfig(beam_size=1, max_len=2)) == \
            model.caption_features(feats)
        wide = model.generate(feats, beam_size=3, max_len=6)
        assert torch.equal(wide.ids, model.decoder.beam_search(model.encode_video(feats)[0], 3, 6))
        with pytest.raises(TypeError, match="unknown generation setting"):
            model.caption_features(feats, beam=3)
    finally:
        model.generation = GenerationConfig()


@pytest.mark.slow
def test_the_model_room_imports_no_file_video_or_checkpoint_room():
    import subprocess
    import sys

    code = ("import sys, captioner.models.captioner, captioner.models\n"
            "print(sorted(m for m in sys.modules if m.startswith('captioner')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)
    assert "captioner.models.captioner" in loaded
    for room in ("captioner.video", "captioner.checkpointing", "captioner.api", "captioner.io", "captioner.device",
                 "captioner.data", "captioner.features", "captioner.systems"):
        assert room not in loaded, room
