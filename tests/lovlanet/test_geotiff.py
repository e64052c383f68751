"""GeoTIFF in, GeoTIFF out: georeference, colour table, nodata, windowed = whole, evaluation by georeference.

The scenes are written here with rasterio: UTM zone 33N, 10 m pixels at a non-trivial origin, uint16,
four bands (R, G, B, NIR, with their colour interpretation), nodata 0 over a corner.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from rasterio.enums import ColorInterp  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from lovlanet import evaluate, predict  # noqa: E402
from lovlanet.geo import GeoScene  # noqa: E402
from lovlanet.inference import NODATA_LABEL, predict_image, predict_scene  # noqa: E402
from lovlanet.model import load_model  # noqa: E402
from lovlanet.palette import palette  # noqa: E402

CRS = "EPSG:32633"
TRANSFORM = from_origin(512_345.0, 4_871_230.0, 10.0, 10.0)
H, W = 150, 230


def write_scene(path, height=H, width=W, transform=TRANSFORM, crs=CRS, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(200, 4000, (4, height, width), dtype=np.uint16)
    data[:, :40, :60] = 0  # a nodata corner
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=4, dtype="uint16", crs=crs,
                       transform=transform, nodata=0, photometric="RGB") as dst:
        dst.write(data)
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
    return path


@pytest.fixture
def scene(tmp_path):
    return write_scene(tmp_path / "scene.tif")


def run_predict(trained, inputs, out, *extra):
    return predict.cli([*map(str, inputs), "--checkpoint", str(trained / "best.pt"), "--out", str(out),
                        "--device", "cpu", *extra])


def test_output_has_the_scenes_georeference_colour_table_and_nodata(trained, scene, tmp_path):
    assert run_predict(trained, [scene], tmp_path / "out", "--probabilities") == 0
    classes = load_model(trained / "best.pt").config.class_names
    with rasterio.open(tmp_path / "out" / "scene_classes.tif") as out, rasterio.open(scene) as src:
        assert (out.crs, out.transform, out.width, out.height) == (src.crs, src.transform, src.width, src.height)
        assert out.count == 1 and out.dtypes[0] == "uint8" and out.nodata == NODATA_LABEL
        colours = out.colormap(1)
        for i, colour in enumerate(palette(classes)):
            assert colours[i][:3] == tuple(int(c) for c in colour)
        assert json.loads(out.tags()["CLASS_NAMES"]) == list(classes)
        assert out.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and out.block_shapes[0] == (512, 512)
        labels = out.read(1)
        assert (labels[:40, :60] == NODATA_LABEL).all()       # nodata stays nodata
        assert (labels[40:] < len(classes)).all() and (labels[:, 60:] < len(classes)).all()
    with rasterio.open(tmp_path / "out" / "scene_probabilities.tif") as probs:
        assert probs.count == len(classes) and probs.crs == out.crs and probs.transform == out.transform
        percent = probs.read().astype(int)
        assert (percent[:, :40, :60] == NODATA_LABEL).all()
        assert np.abs(percent[:, 40:].sum(0) - 100).max() <= len(classes)  # rounding only
        top = np.sort(percent[:, 40:], axis=0)
        clear = top[-1] - top[-2] > 1  # a clear winner survives rounding to percent
        assert (percent[:, 40:].argmax(0) == labels[40:])[clear].all()
    assert (tmp_path / "out" / "scene_classes.qml").read_text().count("paletteEntry") == len(classes)
    assert not list((tmp_path / "out").glob(".*"))  # no temporaries left


def test_windowed_strips_equal_the_whole_scene(trained, scene):
    """Strips narrower than the scene (windows read as needed) give the labels of the whole image in memory."""
    model = load_model(trained / "best.pt").eval()
    with GeoScene(scene) as geo:
        whole_rgb, valid = geo.read(0, H, 0, W)
        outputs = {}
        for strip in (64, 96, None):
            labels = np.full((H, W), 77, np.uint8)

            def write(y0, y1, x0, x1, rows, _probs, labels=labels):
                labels[y0:y1, x0:x1] = rows

            predict_scene(model, geo.read, write, H, W, tile=64, overlap=0.25, device="cpu", strip_width=strip)
            outputs[strip] = labels
    for strip in (64, 96):
        np.testing.assert_array_equal(outputs[strip], outputs[None])
    in_memory = predict_image(model, whole_rgb.permute(1, 2, 0).numpy(), tile=64, overlap=0.25, device="cpu")
    ok = valid.numpy()
    # Away from the nodata corner's windows the in-memory image (which predicts nodata pixels too) agrees.
    np.testing.assert_array_equal(outputs[None][64:, 128:], in_memory[64:, 128:])
    assert (outputs[None][~ok] == NODATA_LABEL).all() and (outputs[None][ok] != NODATA_LABEL).all()


def test_default_bands_follow_the_colour_interpretation(tmp_path):
    path = write_scene(tmp_path / "bgr.tif")
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    with GeoScene(path) as geo:
        assert geo.indexes == [3, 2, 1]
    with GeoScene(path, bands=(3, 1, 0)) as geo:
        assert geo.indexes == [4, 2, 1]
    with pytest.raises(ValueError, match="4 band"):
        GeoScene(path, bands=(0, 1, 4))


def test_stretch_ignores_nodata_and_value_range_overrides(scene):
    with GeoScene(scene) as geo:
        low, high = geo.ranges[0]
        assert 200 <= low < high <= 4000  # the zeros of the nodata corner are not in the statistics
    with GeoScene(scene, value_range=(0, 4000)) as geo:
        rgb, _ = geo.read(100, 101, 100, 101)
        with rasterio.open(scene) as src:
            raw = src.read(1, window=rasterio.windows.Window(100, 100, 1, 1))[0, 0]
        assert int(rgb[0, 0, 0]) == int(raw / 4000 * 255 + 0.5)


def test_bands_beyond_the_scene_fail_before_any_work(trained, scene, tmp_path, capsys):
    assert run_predict(trained, [scene], tmp_path / "out", "--bands", "0", "1", "4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4 band" in err[0] and "scene.tif" in err[0] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"II*\x00garbage" * 10, b"not a raster at all"])
def test_corrupt_or_non_raster_files_give_one_error_line(trained, tmp_path, capsys, content):
    (tmp_path / "broken.tif").write_bytes(content)
    assert run_predict(trained, [tmp_path / "broken.tif"], tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "broken.tif" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_geotiff_without_rasterio_names_the_extra(trained, scene, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "rasterio", None)  # import rasterio now raises ImportError
    assert run_predict(trained, [scene], tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scene.tif" in err[0] and 'pip install "kkattn[geo]"' in err[0]


def write_labels(path, labels, transform, crs=CRS, colours=None, nodata=255):
    count = 1 if colours is None else 3
    data = labels[None].astype(np.uint8) if colours is None else np.moveaxis(np.asarray(colours)[labels], -1, 0)
    with rasterio.open(path, "w", driver="GTiff", width=labels.shape[1], height=labels.shape[0], count=count,
                       dtype="uint8", crs=crs, transform=transform, nodata=None if colours is not None else nodata) as dst:
        dst.write(data.astype(np.uint8))
    return path


def test_eval_aligns_labels_by_georeference(trained, scene, tmp_path):
    """Labels on a larger raster offset by (7, 5) pixels are read at the scene's place on the ground."""
    model = load_model(trained / "best.pt").eval()
    with GeoScene(scene) as geo:
        labels = np.full((H, W), 77, np.uint8)

        def write(y0, y1, x0, x1, rows, _probs):
            labels[y0:y1, x0:x1] = rows

        predict_scene(model, geo.read, write, H, W, tile=64, overlap=0.25, device="cpu")
    big = np.full((H + 20, W + 20), 200, np.uint8)  # 200: the label raster's nodata
    truth = np.where(labels == NODATA_LABEL, 200, labels)
    truth[100:110] = 200                            # unlabelled rows inside the scene's valid area
    big[5:5 + H, 7:7 + W] = truth
    shifted = TRANSFORM @ rasterio.Affine.translation(-7, -5)
    label_path = write_labels(tmp_path / "labels.tif", big, shifted, nodata=200)
    out = tmp_path / "eval"
    code = evaluate.cli(["--checkpoint", str(trained / "best.pt"), "--scene", str(scene), "--labels", str(label_path),
                         "--tile", "64", "--device", "cpu", "--out", str(out)])
    assert code == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["OA"] == 100.0 and record["pixels"] == int((truth != 200).sum())
    classes = model.config.class_names
    colour_path = write_labels(tmp_path / "colours.tif", np.where(big == 200, 0, big), shifted,
                               colours=palette(classes))
    code = evaluate.cli(["--checkpoint", str(trained / "best.pt"), "--scene", str(scene), "--labels",
                         str(colour_path), "--tile", "64", "--device", "cpu"])
    assert code == 0


@pytest.mark.parametrize("change,word", [({"crs": "EPSG:32632"}, "different CRS"),
                                         ({"transform": TRANSFORM @ rasterio.Affine.translation(30, 0)}, "cover"),
                                         ({"transform": from_origin(512_345.0, 4_871_230.0, 20.0, 20.0)}, "pixel size"),
                                         ({"transform": TRANSFORM @ rasterio.Affine.translation(0.5, 0)}, "fraction")])
def test_eval_refuses_labels_on_other_ground(trained, scene, tmp_path, capsys, change, word):
    label_path = write_labels(tmp_path / "labels.tif", np.zeros((H, W), np.uint8),
                              change.get("transform", TRANSFORM), crs=change.get("crs", CRS))
    code = evaluate.cli(["--checkpoint", str(trained / "best.pt"), "--scene", str(scene), "--labels", str(label_path),
                         "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and word in err[0] and "labels.tif" in err[0]


def test_class_fractions_count_valid_pixels_only(trained, scene, tmp_path):
    assert run_predict(trained, [scene], tmp_path / "out") == 0
    fractions = json.loads((tmp_path / "out" / "class_fractions.json").read_text())["scene.tif"]
    assert abs(sum(fractions.values()) - 100) < 0.1
