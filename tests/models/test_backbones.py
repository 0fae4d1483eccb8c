"""partdist.models.build_backbone: torchvision trunks, weights from files and torchvision's cache
(never downloaded), timm backbones, the compact CNN."""

import pickle

import pytest
import torch
import torchvision
from torchvision.models import get_model, get_model_weights

from partdist.models import build_backbone
from partdist.models.backbones import BACKBONES, TORCHVISION_BACKBONES, check_backbone_name, torchvision_cached_weights


def _tv_state(arch, seed=0):
    """A torchvision model's state_dict (random weights, fc included), as the weights files hold."""
    torch.manual_seed(seed)
    return get_model(arch, weights=None).state_dict()


# resnet18 in test-fast; the larger architectures (seconds each to initialise) in make test
@pytest.mark.parametrize("arch", ["resnet18"] + [pytest.param(a, marks=pytest.mark.slow)
                                                for a in ("resnet50", "resnext50_32x4d", "wide_resnet50_2")])
def test_torchvision_trunk_matches_the_torchvision_model(arch, tmp_path):
    """A torchvision state_dict file loads as it is, and the trunk + torchvision's avgpool/fc
    is torchvision's model."""
    state = _tv_state(arch)
    torch.save(state, tmp_path / "w.pth")
    trunk = build_backbone(arch, last_stride=2, weights=str(tmp_path / "w.pth")).eval()
    ref = get_model(arch, weights=None)
    ref.load_state_dict(state)
    ref.eval()
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fmap = trunk(x)
        assert fmap.shape == (2, trunk.out_channels, 2, 1) and trunk.out_channels == ref.fc.in_features
        torch.testing.assert_close(ref.fc(torch.flatten(ref.avgpool(fmap), 1)), ref(x))


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_last_stride_one_halves_the_stride_and_keeps_the_weights(arch, tmp_path):
    torch.save(_tv_state(arch), tmp_path / "w.pth")
    s2 = build_backbone(arch, 2, str(tmp_path / "w.pth")).eval()
    s1 = build_backbone(arch, 1, str(tmp_path / "w.pth")).eval()
    x = torch.randn(1, 3, 128, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = s2(x), s1(x)
    assert a.shape[-2:] == (4, 2) and b.shape[-2:] == (8, 4)
    assert all(torch.equal(p, q) for p, q in zip(s1.state_dict().values(), s2.state_dict().values()))
    assert not torch.allclose(a, b[..., ::2, ::2])  # stride 1 is not a subsampled stride 2


@pytest.mark.slow  # builds resnext101_64x4d
def test_every_offered_name_builds():
    assert set(BACKBONES) == set(TORCHVISION_BACKBONES) | {"compact"}
    for name in ("resnet34", "resnext101_64x4d", "compact"):
        m = build_backbone(name, last_stride=1)
        with torch.no_grad():
            assert m(torch.zeros(1, 3, 64, 32)).shape == (1, m.out_channels, 4, 2)


def test_weights_from_torchvisions_cache_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_download(*a, **k):  # pragma: no cover - must not be called
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    enum = get_model_weights("resnet18")
    with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd\.pth.*into .*checkpoints.*nothing is downloaded"):
        build_backbone("resnet18", weights="IMAGENET1K_V1")
    (tmp_path / "checkpoints").mkdir()
    state = _tv_state("resnet18", seed=3)
    torch.save(state, tmp_path / "checkpoints" / enum.IMAGENET1K_V1.url.rsplit("/", 1)[1])
    for w in ("IMAGENET1K_V1", "DEFAULT", enum.IMAGENET1K_V1):
        m = build_backbone("resnet18", weights=w)
        assert torch.equal(m.conv1.weight, state["conv1.weight"])
        assert torch.equal(m.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert torchvision_cached_weights("resnet18", "DEFAULT").startswith(str(tmp_path))
    with pytest.raises(ValueError, match=r"resnet18 has no weights 'IMAGENET9K'; expected a local file or one of"):
        build_backbone("resnet18", weights="IMAGENET9K")


def test_weights_files_are_read_without_running_code(tmp_path):
    torch.save(get_model("resnet18", weights=None), tmp_path / "module.pth")  # a pickled module, not a state_dict
    with pytest.raises(pickle.UnpicklingError):
        build_backbone("resnet18", weights=str(tmp_path / "module.pth"))
    torch.save({"state_dict": _tv_state("resnet18")}, tmp_path / "wrapped.pth")
    build_backbone("resnet18", weights=str(tmp_path / "wrapped.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        build_backbone("resnet18", weights=str(tmp_path / "list.pth"))
    torch.save(_tv_state("resnet18"), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"lacks \d+ backbone keys"):
        build_backbone("resnet50", weights=str(tmp_path / "r18.pth"))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_backbone("resnet50", weights=str(tmp_path / "missing.pth"))


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match=r"backbone: expected one of resnet18, .*compact or timm:NAME, got 'vgg16'"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match=r"'timm:' needs a model name"):
        check_backbone_name("timm:")
    with pytest.raises(ValueError, match=r"last_stride: expected 1 or 2, got 3"):
        build_backbone("resnet18", last_stride=3)
    with pytest.raises(ValueError, match="the compact backbone has no pretrained weights"):
        build_backbone("compact", weights="x.pth")


def test_torchvision_ops_load_with_this_torch():
    # torchvision's operator library matches the torch of the venv (requirements-dev.txt): with a
    # mismatched torch, import works but its ops are missing ("operator torchvision::nms does not exist")
    assert hasattr(torch.ops.torchvision, "roi_align") and hasattr(torch.ops.torchvision, "nms")
    boxes = torch.tensor([[0.0, 0, 2, 2], [0.1, 0, 2, 2], [5, 5, 6, 6]])
    assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]


# ---------------------------------------------------------------------------------- timm
@pytest.mark.slow  # four networks
def test_timm_backbone(tmp_path):
    timm = pytest.importorskip("timm")
    m = build_backbone("timm:resnet18", last_stride=2).eval()
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert m(x).shape == (2, m.out_channels, 2, 1) and m.out_channels == 512
        s1 = build_backbone("timm:resnet18", last_stride=1)
        assert s1(x).shape == (2, 512, 4, 2)
    # a timm state_dict file (classifier included) loads as it is
    src = timm.create_model("resnet18", pretrained=False)
    torch.save(src.state_dict(), tmp_path / "t.pth")
    w = build_backbone("timm:resnet18", weights=str(tmp_path / "t.pth")).eval()
    src.eval()
    with torch.no_grad():
        torch.testing.assert_close(w(x), src.forward_features(x))
    with pytest.raises(ValueError, match=r"timm has no model 'no_such_net'"):
        build_backbone("timm:no_such_net")
    with pytest.raises(ValueError, match="for a timm backbone, a local state_dict file"):
        build_backbone("timm:resnet18", weights="IMAGENET1K_V1")


def test_timm_missing_is_a_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_timm(name, *a, **k):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("no timm")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ValueError, match=r"'timm:resnet18' needs timm \(pip install timm\)"):
        check_backbone_name("timm:resnet18")
