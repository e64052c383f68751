"""lovlanet-predict and lovlanet-eval under careless hands: every bad argument, input or output is one
``error:`` line and exit 2 before any work, and nothing is half-written."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from lovlanet import evaluate, predict
from lovlanet.metrics import ConfusionMatrix


def one_error(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    for word in words:
        assert word in err[0], err[0]
    return err[0]


@pytest.fixture
def scene(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(folder / "a.png")
    return folder


def predict_args(trained, inputs, out, *extra):
    return [*map(str, inputs), "--checkpoint", str(trained / "best.pt"), "--out", str(out), "--device", "cpu", *extra]


@pytest.mark.parametrize("shape,axes", [((1, 64, 96), "planar, one band"), ((3, 64, 96), "planar RGB"),
                                        ((5, 64, 96), "five pages"), ((64, 96, 4), "interleaved RGBA")])
def test_tiffs_are_read_by_their_axes(trained, tmp_path, shape, axes):
    data = np.random.default_rng(1).integers(0, 4000, shape, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "scene.tif", data)
    assert predict.cli(predict_args(trained, [tmp_path / "scene.tif"], tmp_path / "out")) == 0
    with Image.open(tmp_path / "out" / "scene_mask.png") as mask:
        assert mask.size == (96, 64), axes  # (width, height): not 64×1 from a misread axis


def test_two_inputs_with_one_stem_are_refused(trained, scene, tmp_path, capsys):
    tifffile.imwrite(scene / "a.tif", np.zeros((64, 64, 3), np.uint8))
    assert predict.cli(predict_args(trained, [scene], tmp_path / "out")) == 2
    one_error(capsys, "a.png", "a.tif", "a_mask.png")
    assert not (tmp_path / "out").exists()


def test_a_non_image_fails_before_any_work(trained, scene, tmp_path, capsys):
    (scene / "notes.png").write_text("not an image")
    assert predict.cli(predict_args(trained, [scene], tmp_path / "out")) == 2
    one_error(capsys, "notes.png")
    assert not (tmp_path / "out").exists()  # no legend.png, no mask of a.png


@pytest.mark.parametrize("extra,word", [(["--alpha", "5"], "--alpha"), (["--tile", "-64"], "--tile"),
                                        (["--tile", "50"], "multiple of 32"), (["--overlap", "1"], "--overlap"),
                                        (["--batch-size", "0"], "--batch-size"), (["--bands", "0", "1", "-2"], "--bands"),
                                        (["--bands", "0", "1", "7"], "band")])
def test_bad_arguments(trained, scene, tmp_path, capsys, extra, word):
    assert predict.cli(predict_args(trained, [scene], tmp_path / "out", *extra)) == 2
    one_error(capsys, word)
    assert not (tmp_path / "out").exists()


def unusable_outputs(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [(tmp_path / "file", "is a file"), (tmp_path / "file" / "sub", "under a file")]
    if os.geteuid() != 0:  # root writes anywhere
        readonly = tmp_path / "ro"
        readonly.mkdir()
        readonly.chmod(0o500)
        cases.append((readonly / "out", "not writable"))
    return cases


def test_predict_refuses_unusable_out_before_work(trained, scene, tmp_path, capsys):
    for out, word in unusable_outputs(tmp_path):
        assert predict.cli(predict_args(trained, [scene], out)) == 2
        one_error(capsys, word)


def test_eval_refuses_unusable_out_before_evaluating(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evaluate, "evaluate_dataset", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    for out, word in unusable_outputs(tmp_path):
        code = evaluate.cli(["--checkpoint", str(trained / "best.pt"), "--dataset", "synthetic", "--out", str(out)])
        assert code == 2
        one_error(capsys, word)


@pytest.mark.parametrize("options,word", [('{"colour": 1}', "colour"), ("{oops", "JSON"), ("[1]", "JSON object")])
def test_eval_dataset_options(trained, tmp_path, capsys, options, word):
    code = evaluate.cli(["--checkpoint", str(trained / "best.pt"), "--dataset", "synthetic",
                         "--dataset-options", options, "--tile", "64"])
    assert code == 2
    one_error(capsys, word)


def test_eval_writes_strict_json(trained, tmp_path, monkeypatch):
    """A class absent from the split has IoU NaN: metrics.json says null (bare NaN is not JSON)."""
    real = evaluate.evaluate_dataset

    def with_absent_class(*args, **kwargs):
        metrics = real(*args, **kwargs)
        metrics["IoU"] = {**metrics["IoU"], next(iter(metrics["IoU"])): float("nan")}
        return metrics

    monkeypatch.setattr(evaluate, "evaluate_dataset", with_absent_class)
    code = evaluate.cli(["--checkpoint", str(trained / "best.pt"), "--dataset", "synthetic", "--dataset-options",
                         '{"num_images": 8, "size": 64}', "--tile", "64", "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0
    record = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert None in record["IoU"].values()


def test_confusion_matrix_refuses_labels_outside_the_classes():
    matrix = ConfusionMatrix(3, ignore_index=255)
    matrix.update(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 255, 2]))  # 255 is skipped
    with pytest.raises(ValueError, match="target value 7"):
        matrix.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="target value -1"):
        matrix.update(torch.tensor([0, 1]), torch.tensor([-1, 1]))
