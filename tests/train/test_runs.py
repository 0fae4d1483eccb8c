"""The run's configuration and checkpoints (partdist.runs): migration of keys, validation,
the checkpoint round trip, and every command reading checkpoints through it."""

import dataclasses

import pytest
import torch

from partdist.runs import (
    CheckpointError,
    TrainConfig,
    build_model,
    load_checkpoint,
    load_model,
    save_checkpoint,
)


def _state(cfg, num_classes=4, **extra):
    torch.manual_seed(0)
    return {"config": dataclasses.asdict(cfg), "num_classes": num_classes,
            "model": build_model(cfg, num_classes).state_dict(), "epoch": 1, "history": [], **extra}


def test_from_dict_migrates_renamed_keys_defaults_missing_ones_and_names_unknown_ones():
    cfg = TrainConfig.from_dict({"gamma": 0.5, "p": 4})
    assert cfg.lr_gamma == 0.5 and cfg.p == 4
    assert cfg.amp == TrainConfig().amp and cfg.compile is False  # keys a configuration may lack
    with pytest.raises(ValueError, match="unknown field.*bogus"):
        TrainConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize("field,value,needle", [("amp", "fp8", "amp: expected one of off, bf16, fp16"),
                                                ("compile", "yes", "compile: expected true or false"),
                                                ("k", 1, "k: the triplet losses need at least 2")])
def test_validate_names_the_field(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        dataclasses.replace(TrainConfig(), **{field: value}).validate()


def test_checkpoint_round_trip_is_atomic_and_weights_only(tmp_path):
    cfg = TrainConfig(backbone="compact", height=64, width=32, amp="bf16")
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(_state(cfg), path)
    assert not (tmp_path / "checkpoint.pt.tmp").exists()
    state, back = load_checkpoint(path)
    assert back == cfg and state["num_classes"] == 4
    model, cfg2, _ = load_model(path)
    assert cfg2 == cfg and not model.training
    for k, v in build_model(cfg, 4).state_dict().items():
        assert v.shape == model.state_dict()[k].shape


def test_checkpoint_of_a_renamed_key_loads_everywhere(tmp_path):
    """A checkpoint whose configuration holds a renamed key is read the same by every command
    (train's resume, eval, FeatureExtractor, index / search)."""
    from partdist.eval import FeatureExtractor
    from partdist.search.cli import load_checkpoint as search_load

    cfg = TrainConfig(backbone="compact", height=64, width=32)
    state = _state(cfg)
    state["config"]["gamma"] = state["config"].pop("lr_gamma")
    path = str(tmp_path / "old.pt")
    torch.save(state, path)
    assert load_checkpoint(path)[1] == cfg
    model, cfg2 = search_load(path)
    assert cfg2 == cfg and isinstance(model, torch.nn.Module)
    assert FeatureExtractor(path).height == 64


def test_weights_that_do_not_fit_are_a_checkpoint_error(tmp_path):
    cfg = TrainConfig(backbone="compact", height=64, width=32)
    state = _state(cfg)
    state["num_classes"] = 7  # the classifier's weights are for 4
    path = str(tmp_path / "bad.pt")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="its weights do not fit its configuration"):
        load_model(path)
