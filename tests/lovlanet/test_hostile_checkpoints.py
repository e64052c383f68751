"""Checkpoints from anywhere: every hostile or broken file is refused before anything is built,
nothing is downloaded, and the message is one line naming the file (never advising unsafe loading)."""
from __future__ import annotations

import argparse
import socket
import warnings

import pytest
import torch
from PIL import Image

import lovlanet.model
from lovlanet import CheckpointError, LoVLANetConfig, build_model, load_model
from lovlanet import evaluate, predict
from lovlanet.model import CHECKPOINT_FORMAT

SMALL = dict(visual_kwargs=dict(depth=2, embed_dim=64, num_heads=2), feature_blocks=(1, 1, 2, 2), img_size=64,
             decoder_dim=16, text_kwargs=dict(width=32, layers=1, heads=2))


@pytest.fixture
def no_build_no_network(monkeypatch):
    """Fail the test if a model is built or a socket connects (the refusal must come first)."""
    def refuse_build(*args, **kwargs):
        raise AssertionError("a model was built from a config that should have been refused")

    def refuse_connect(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(lovlanet.model.LoVLANet, "__init__", refuse_build)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket, "create_connection", refuse_connect)


def write_checkpoint(path, config_overrides=None, drop=(), **entries):
    config = LoVLANetConfig(**SMALL).to_dict()
    config.update(config_overrides or {})
    payload = {"format": CHECKPOINT_FORMAT, "config": config, "model": {"w": torch.zeros(1)}, **entries}
    for key in drop:
        payload.pop(key)
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("overrides,word", [
    ({"img_size": 640000}, "img_size"),                                  # 102 GB of positional embedding
    ({"visual_kwargs": {"embed_dim": 8192, "num_heads": 2}}, "embed_dim"),
    ({"visual_kwargs": {"depth": 2, "mlp_ratio": 400}}, "visual_kwargs"),
    ({"text_kwargs": {"width": 10 ** 6}}, "text_kwargs"),
    ({"visual_model": "hf-hub:someone/vit"}, "visual_model"),           # timm would download it
    ({"text_model": "hf-hub:someone/clip"}, "text_model"),              # open_clip would download it
    ({"attn_backend": "bogus"}, "attn_backend"),                        # would fail at the first forward
    ({"class_names": ["c"] * 2 + [7]}, "class_names"),
    ({"class_names": [f"c{i}" for i in range(1000)]}, "class_names"),
    ({"decoder_dim": 10 ** 6}, "decoder_dim"),
    ({"sigma": float("nan")}, "sigma"),
    ({"feature_blocks": [1, 2, 3, 40]}, "feature_blocks"),
    ({"unexpected_field": 1}, "unexpected_field"),
])
def test_hostile_configs_are_refused_before_building(tmp_path, no_build_no_network, overrides, word):
    path = write_checkpoint(tmp_path / "hostile.pt", overrides)
    with pytest.raises(CheckpointError, match=word) as info:
        load_model(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("drop", ["config", "model"])
def test_checkpoint_without_config_or_weights(tmp_path, no_build_no_network, drop):
    path = write_checkpoint(tmp_path / "partial.pt", drop=(drop,))
    with pytest.raises(CheckpointError, match="damaged") as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_corrupt_and_code_carrying_files_never_suggest_unsafe_loading(tmp_path, no_build_no_network):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    carrying = tmp_path / "carrying.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "config": {}, "model": {}, "x": argparse.Namespace(a=1)}, carrying)
    for path in (corrupt, carrying):
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message and "weights_only" not in message


def test_wrong_width_visual_checkpoint_is_a_checkpoint_error(tmp_path):
    import timm

    wide = timm.create_model("vit_base_patch32_clip_quickgelu_224", pretrained=False, num_classes=0, depth=2,
                             embed_dim=96, num_heads=2, img_size=64)
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    with warnings.catch_warnings(), pytest.raises(CheckpointError, match="does not fit the visual encoder") as info:
        warnings.simplefilter("ignore")
        build_model("full", visual_checkpoint=tmp_path / "wide.pt", **SMALL)
    assert "wide.pt" in str(info.value)


def test_legacy_text_model_name_still_loads():
    config = LoVLANetConfig.from_dict({**LoVLANetConfig(**SMALL).to_dict(), "text_model": "ViT-B-32-quickgelu"})
    assert (config.text_model, config.text_activation) == ("ViT-B-32", "quickgelu")


@pytest.mark.parametrize("tool", ["eval", "predict"])
def test_cli_reports_a_hostile_checkpoint_in_one_line(tmp_path, capsys, no_build_no_network, tool):
    path = write_checkpoint(tmp_path / "hostile.pt", {"img_size": 640000})
    (tmp_path / "in").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "in" / "scene.png")
    if tool == "eval":
        code = evaluate.cli(["--checkpoint", str(path), "--dataset", "synthetic", "--out", str(tmp_path / "out")])
    else:
        code = predict.cli([str(tmp_path / "in"), "--checkpoint", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and "hostile.pt" in err[0]
    assert not (tmp_path / "out").exists()
