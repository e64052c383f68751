"""The console tools end to end on a tiny synthetic setup: train → checkpoint → resume → eval → predict, DDP."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lovlanet import evaluate, predict, train
from lovlanet.data import SyntheticLandCover
from tiny_run import TINY


def test_train_writes_checkpoints_and_logs_then_resumes(trained, capsys):
    assert {p.name for p in trained.iterdir()} >= {"last.pt", "best.pt", "metrics.csv", "metrics.jsonl", "train_config.json"}
    assert not [p for p in trained.iterdir() if p.name.endswith(".tmp")]
    state = torch.load(trained / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and "optimizer" in state and "scheduler" in state
    assert train.cli_main(["--epochs", "2", "--out", str(trained), "--resume", *TINY]) == 0
    assert "resumed from" in capsys.readouterr().out
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["lr"] == 0.0  # poly schedule ends at 0
    assert torch.load(trained / "last.pt", weights_only=True)["epoch"] == 2


def test_resume_refuses_another_model(trained, capsys):
    bad = [a if a != "full" else "baseline" for a in TINY]
    code = train.cli(["--epochs", "3", "--out", str(trained), "--resume", "--variant", "baseline", *bad])
    assert code == 2 and "another model configuration" in capsys.readouterr().err


def test_eval_writes_tables(trained, tmp_path, capsys):
    code = evaluate.cli(["--checkpoint", str(trained / "best.pt"), "--dataset", "synthetic",
                         "--dataset-options", json.dumps({"size": 64, "num_images": 6}), "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| building | road | water | barren | forest | agriculture | mIoU |" in printed
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["pixels"] == 6 * 64 * 64 and 0 <= metrics["mIoU"] <= 100
    assert (tmp_path / "metrics.md").read_text().startswith("**full on synthetic val")


def test_eval_and_predict_reject_another_variant(trained, tmp_path, capsys):
    base = ["--checkpoint", str(trained / "best.pt")]
    assert evaluate.cli([*base, "--variant", "baseline"]) == 2
    assert "holds a 'full' model, not 'baseline'" in capsys.readouterr().err
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    assert predict.cli([str(tmp_path / "a.png"), *base, "--out", str(tmp_path / "o"), "--variant", "kk+what"]) == 2
    assert "unknown variant" in capsys.readouterr().err


def test_eval_rejects_another_class_list(trained, tmp_path, capsys):
    root = tmp_path / "own"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "masks" / "a.png")
    (root / "classes.json").write_text(json.dumps({"classes": ["cloud", "snow"]}))
    code = evaluate.cli(["--checkpoint", str(trained / "best.pt"), "--dataset", "folder", "--data-root", str(root),
                         "--split", "all"])
    assert code == 2 and "cloud" in capsys.readouterr().err


def test_predict_writes_palette_masks_overlays_and_legend(trained, tmp_path):
    scene = SyntheticLandCover("test", 1, size=160)[0]  # larger than the 64-pixel windows
    Image.fromarray(scene["image"].permute(1, 2, 0).numpy()).save(tmp_path / "scene.png")
    out = tmp_path / "pred"
    assert predict.cli([str(tmp_path / "scene.png"), "--checkpoint", str(trained / "best.pt"), "--out", str(out),
                        "--tile", "64", "--overlay"]) == 0
    mask = Image.open(out / "scene_mask.png")
    assert mask.mode == "P" and mask.size == (160, 160) and np.asarray(mask).max() < 6
    assert Image.open(out / "scene_overlay.png").size == (160, 160) and (out / "legend.png").exists()
    assert set(json.loads((out / "class_fractions.json").read_text())["scene.png"]) == set(
        ("building", "road", "water", "barren", "forest", "agriculture"))


def test_tools_reject_bad_input(tmp_path, capsys):
    assert predict.cli([str(tmp_path / "missing.png"), "--checkpoint", "x.pt", "--out", str(tmp_path)]) == 2
    assert "missing.png" in capsys.readouterr().err
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    assert predict.cli([str(tmp_path), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "none.pt" in capsys.readouterr().err
    assert train.cli(["--variant", "kk+mystery", "--out", str(tmp_path / "t"), *TINY]) == 2
    assert "unknown variant" in capsys.readouterr().err
    assert train.cli(["--dataset", "loveda", "--data-root", str(tmp_path / "nope"), "--out", str(tmp_path / "t")]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--help"])
    assert "torchrun" in capsys.readouterr().out


def test_ddp_two_processes_gloo(tmp_path):
    """torchrun with 2 CPU processes: sharded data, reduced metrics, files from rank 0 only."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "lovlanet.train", "--epochs", "1", "--out", str(tmp_path), *TINY]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1  # written once, by rank 0
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["metrics"]["pixels"] == 8 * 64 * 64  # both ranks' halves of val, all-reduced
    assert result.stdout.count('"best_mIoU"') == 1


def test_train_config_nests_the_model_config(trained, tmp_path):
    """train_config.json holds the model's fields under "model"; flat files of the earlier layout still load."""
    saved = json.loads((trained / "train_config.json").read_text())
    assert "variant" not in saved and saved["model"]["img_size"] == 64
    args = train.build_parser().parse_args(["--config", str(trained / "train_config.json"), "--sigma", "3"])
    cfg = train.train_config(args)
    assert cfg.model["sigma"] == 3.0 and cfg.model["decoder_dim"] == 16 and cfg.epochs == saved["epochs"]
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"variant": "kk", "img_size": 64, "model_options": {"decoder_dim": 8}, "epochs": 2}))
    cfg = train.train_config(train.build_parser().parse_args(["--config", str(flat)]))
    assert cfg.model == {"decoder_dim": 8, "variant": "kk", "img_size": 64} and cfg.epochs == 2
    assert cfg.model_config(["a", "b"]).variant == "kk"
    for bad, word in (({"model": {"class_names": ["a"]}}, "dataset"), ({"model": {"depth": 2}}, "depth"),
                      ({"model": {"sigma": -1}}, "sigma"), ({"variants": "kk"}, "variants")):
        with pytest.raises(ValueError, match=word):
            train.TrainConfig.from_dict(bad)
