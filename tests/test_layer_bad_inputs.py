"""Bad input to the Python layer (models, evaluation helpers, pictures) gives clear errors."""

import pytest
import torch

from partdist.eval import fused_distance, global_distance
from partdist.models import PCB, AlignedReID, build_backbone
from partdist.models.backbones import load_local_weights, resnet18
from partdist.viz import save_curves, save_rank_list


def test_distance_helpers():
    with pytest.raises(ValueError, match=r"expected qf \[Q, D\] and gf \[G, D\]"):
        global_distance(torch.rand(3, 4), torch.rand(5, 3))
    with pytest.raises(ValueError, match=r"metric must be"):
        global_distance(torch.rand(3, 4), torch.rand(5, 4), metric="manhattan")
    with pytest.raises(ValueError, match=r"must match"):
        fused_distance(torch.rand(3, 4), torch.rand(4, 3))
    d = global_distance(torch.rand(3, 4), torch.rand(5, 4), metric="cosine")
    assert d.shape == (3, 5) and (d >= -1e-6).all() and (d <= 2 + 1e-6).all()


def test_models():
    with pytest.raises(ValueError, match=r"expected images \[N, 3, H, W\]"):
        AlignedReID(backbone="compact")(torch.rand(2, 1, 64, 32))
    with pytest.raises(ValueError, match=r"local_pool: expected 'avg' or 'max'"):
        AlignedReID(backbone="compact", local_pool="min")
    with pytest.raises(ValueError, match=r"parts: expected >= 1"):
        PCB(parts=0, backbone="compact")
    with pytest.raises(ValueError, match=r"backbone: expected one of"):
        build_backbone("vgg16")
    with pytest.raises(FileNotFoundError, match=r"nothing is downloaded"):
        resnet18(weights="/nonexistent/resnet18.pth")


def test_local_weights_round_trip(tmp_path):
    src = resnet18()
    path = tmp_path / "w.pth"
    state = dict(src.state_dict())
    state["fc.weight"] = torch.zeros(1000, 512)  # torchvision files carry the classifier
    torch.save(state, path)
    dst = load_local_weights(resnet18(), str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])
    torch.save({"conv1.weight": state["conv1.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"lacks .* backbone keys"):
        load_local_weights(resnet18(), str(tmp_path / "partial.pth"))


def test_pictures(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (32, 64))
    with pytest.raises(ValueError, match=r"2 gallery images but 1 match flags"):
        save_rank_list(img, [img, img], [True], str(tmp_path / "r.png"))
    with pytest.raises(ValueError, match=r"none of the requested keys"):
        save_curves([{"epoch": 1, "loss": 1.0}], str(tmp_path / "c.png"), keys=("mAP",))
