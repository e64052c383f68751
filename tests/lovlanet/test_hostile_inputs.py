"""Hostile and first-contact inputs to the tools, second pass: memory never sized by a header, inputs never
overwritten, broken weights and non-finite outputs refused, truncated files and full disks as one line,
checkpoint messages that say what the file is, the band rule, resume that keeps what it can and refuses
silent changes, and --help that answers before torch loads."""
from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from tiny_run import TINY

from lovlanet import evaluate, predict, train
import lovlanet.data.common as common
from lovlanet.data.common import DataError, read_image

ROOT = Path(__file__).resolve().parents[2]


def one_error(capsys, *words):
    """The one ``error:`` line (progress bars may precede it), no traceback, naming ``words``."""
    text = capsys.readouterr().err
    err = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in text, text[-2000:]
    for word in words:
        assert word in err[0], err[0]
    return err[0]


def run_predict(trained, inputs, out, *extra):
    return predict.cli([*map(str, inputs), "--checkpoint", str(trained / "best.pt"), "--out", str(out),
                        "--device", "cpu", *extra])


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def png_header_only(path, width, height):
    """A PNG whose header claims ``width × height`` RGB pixels, with one tiny (wrong-sized) IDAT: 100 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------- memory and the header
def sparse_tiff(path, side=100_000):
    """A plain TIFF (no CRS) whose header claims side² RGB pixels, none of them stored: ~0.5 MB on disk."""
    rasterio = pytest.importorskip("rasterio")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8", tiled=True,
                           blockxsize=512, blockysize=512, SPARSE_OK="TRUE", BIGTIFF="YES", photometric="RGB"):
            pass
    assert path.stat().st_size < 2 * 2 ** 20
    return path


PEAK_RSS = textwrap.dedent("""
    import os, resource, sys
    import torch  # noqa: F401  (counted in the baseline)
    import lovlanet.model as model_module
    from lovlanet import predict

    real_load, windows = model_module.load_model, int(sys.argv[4])

    def load(*args, **kwargs):  # the model stops the run after some batches of windows: 10^10 pixels take days
        model = real_load(*args, **kwargs)
        calls, forward = [0], model.forward

        def counted(x, *a, **k):
            calls[0] += 1
            if calls[0] > windows:
                raise KeyboardInterrupt
            return forward(x, *a, **k)

        model.forward = counted
        return model

    model_module.load_model = load
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = predict.cli([sys.argv[1], "--checkpoint", sys.argv[2], "--out", sys.argv[3], "--device", "cpu"])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = sys.argv[3]
    print(code, before * 1024, after * 1024, sorted(os.listdir(out)) if os.path.isdir(out) else [])
""")


def test_a_huge_plain_tiff_header_is_read_window_by_window_in_bounded_memory(trained, tmp_path):
    """100000² claimed by a 0.5 MB file without a CRS: it used to be read whole (a 27.9 GiB allocation)."""
    scene = sparse_tiff(tmp_path / "huge.tif")
    assert predict.collect_inputs([str(scene)]) == {scene: predict.RASTER}
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, str(scene), str(trained / "best.pt"), str(tmp_path / "out"),
                             "40"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    code, before, after, left = result.stdout.strip().splitlines()[-1].split(" ", 3)
    assert int(code) == 130, result.stderr[-2000:]   # interrupted after 40 batches of windows had run
    assert int(after) - int(before) < 500 * 2 ** 20   # the tile footprint and GDAL's bounded cache, not the scene
    assert left == "[]"                               # nothing half-written


def test_a_png_header_over_the_pixel_limit_is_refused_before_decoding(trained, tmp_path, capsys):
    bomb = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    assert run_predict(trained, [bomb], tmp_path / "out") == 2
    one_error(capsys, "bomb.png", "100000×100000", f"{common.MAX_PIXELS:,}", "--max-pixels")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="pixel limit"):
        read_image(bomb)  # the datasets' reader too


def test_max_pixels_sets_the_limit(trained, tmp_path, capsys):
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(tmp_path / "a.png")
    assert run_predict(trained, [tmp_path / "a.png"], tmp_path / "out", "--max-pixels", "6000") == 2
    one_error(capsys, "6,000-pixel limit")
    assert run_predict(trained, [tmp_path / "a.png"], tmp_path / "out", "--max-pixels", "6144") == 0
    with common.pixel_limit(10):
        with pytest.raises(DataError, match="10-pixel limit"):
            read_image(tmp_path / "a.png")
    read_image(tmp_path / "a.png")  # the limit is back to its default after the block


def test_a_large_plain_tiff_without_rasterio_is_refused_naming_both_fixes(trained, tmp_path, capsys, monkeypatch):
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((64, 96, 3), np.uint8))
    monkeypatch.setattr(predict, "has_rasterio", lambda: False)
    monkeypatch.setattr(predict, "georeferenced_bands", lambda path: None)
    assert run_predict(trained, [tmp_path / "big.tif"], tmp_path / "out", "--max-pixels", "1000") == 2
    one_error(capsys, "big.tif", "kkattn[geo]", "--max-pixels")


# ------------------------------------------------------------------------------------ inputs are kept
def test_out_equal_to_the_input_folder_never_overwrites_an_input(trained, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("scene.png", "scene_mask.png"):  # a user's own mask file beside the image
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / name)
    before = {p.name: md5(p) for p in folder.iterdir()}
    for extra in ([], ["--overwrite"]):
        assert run_predict(trained, [folder], folder, *extra) == 2
        one_error(capsys, "scene_mask.png", "would overwrite the input")
        assert {p.name: md5(p) for p in folder.iterdir()} == before


def test_existing_outputs_are_refused_unless_overwrite(trained, tmp_path, capsys):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert run_predict(trained, [tmp_path / "a.png"], out) == 0
    stamp = (out / "a_mask.png").stat().st_mtime_ns
    assert run_predict(trained, [tmp_path / "a.png"], out) == 2
    one_error(capsys, "a_mask.png", "already exist", "--overwrite")
    assert (out / "a_mask.png").stat().st_mtime_ns == stamp
    assert run_predict(trained, [tmp_path / "a.png"], out, "--overwrite") == 0


# -------------------------------------------------------------------------- broken weights and outputs
def test_a_checkpoint_with_nan_weights_is_refused_naming_the_tensor(trained, tmp_path, capsys):
    state = torch.load(trained / "best.pt", weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    torch.save(state, tmp_path / "nan.pt")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    assert predict.cli([str(tmp_path / "a.png"), "--checkpoint", str(tmp_path / "nan.pt"), "--out",
                        str(tmp_path / "out"), "--device", "cpu"]) == 2
    one_error(capsys, "nan.pt", name, "NaN/inf")
    assert not (tmp_path / "out").exists()


def test_non_finite_logits_are_an_error_not_a_mask(trained, tmp_path, capsys, monkeypatch):
    import lovlanet.model

    real = lovlanet.model.load_model

    def broken(*args, **kwargs):
        model = real(*args, **kwargs)
        model.forward = lambda x, *a, **k: torch.full((x.shape[0], 6, *x.shape[-2:]), float("nan"))
        return model

    monkeypatch.setattr(lovlanet.model, "load_model", broken)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    assert run_predict(trained, [tmp_path / "a.png"], tmp_path / "out") == 2
    one_error(capsys, "NaN/inf")
    assert not (tmp_path / "out" / "a_mask.png").exists()
    code = evaluate.cli(["--checkpoint", str(trained / "best.pt"), "--dataset", "synthetic", "--dataset-options",
                         '{"num_images": 2, "size": 64}', "--tile", "64", "--device", "cpu"])
    assert code == 2
    one_error(capsys, "NaN/inf")


# ----------------------------------------------------------------------- damaged files and full disks
def test_a_truncated_geotiff_is_one_error_line_and_no_partial_file(trained, tmp_path, capsys):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    data = np.random.default_rng(0).integers(0, 255, (3, 512, 512), dtype=np.uint8)
    whole = tmp_path / "whole.tif"
    with rasterio.open(whole, "w", driver="GTiff", width=512, height=512, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500_000, 4_800_000, 10, 10), tiled=True, blockxsize=128,
                       blockysize=128) as dst:
        dst.write(data)
    half = tmp_path / "half.tif"
    half.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    assert run_predict(trained, [half], tmp_path / "out") == 2
    one_error(capsys, "half.tif", "truncated or corrupt", "IReadBlock failed")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


FULL_DISK = textwrap.dedent("""
    import resource, sys
    from lovlanet import train
    sys.path.insert(0, sys.argv[2])
    from tiny_run import TINY
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes fail with EFBIG
    sys.exit(train.cli(["--epochs", "1", "--out", sys.argv[1], *TINY]))
""")


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_lock_or_partial_file(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(out), str(Path(__file__).parent), str(2 ** 20)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    err = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "cannot write" in err[0] and ".pt" in err[0] and "Traceback" not in result.stderr, \
        result.stderr[-2000:]
    assert not (out / ".lock").exists()
    assert not list(out.glob(".*.tmp")) and not (out / "best.pt").exists() and not (out / "last.pt").exists()


def test_a_full_disk_while_predicting_is_one_line(trained, tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    code = textwrap.dedent("""
        import resource, sys
        from lovlanet import predict
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
        sys.exit(predict.cli(sys.argv[1:]))
    """)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.png"), "--checkpoint",
                             str(trained / "best.pt"), "--out", str(tmp_path / "out"), "--device", "cpu"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "error: cannot write" in result.stderr and "File too large" in result.stderr
    assert not list((tmp_path / "out").glob(".*.tmp"))


# --------------------------------------------------------------------------------- checkpoint messages
@pytest.mark.parametrize("kind,word", [("text", "not a PyTorch checkpoint (it is a text file"),
                                       ("folder", "is a folder, not a checkpoint file"),
                                       ("truncated", "truncated or damaged"),
                                       ("empty", "is empty")])
def test_checkpoint_errors_say_what_the_file_is(trained, tmp_path, capsys, kind, word):
    path = tmp_path / "model.pt"
    if kind == "text":
        path.write_text("epoch,loss\n1,0.5\n")
    elif kind == "folder":
        path = trained
    elif kind == "truncated":
        data = (trained / "best.pt").read_bytes()
        path.write_bytes(data[:len(data) // 2])
    else:
        path.write_bytes(b"")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    assert predict.cli([str(tmp_path / "a.png"), "--checkpoint", str(path), "--out", str(tmp_path / "out")]) == 2
    message = one_error(capsys, word)
    assert "weights_only" not in message and "objects other than tensors" not in message
    if kind == "folder":
        assert "best.pt" in message  # what the user probably meant


# ------------------------------------------------------------------------------------------- the bands
def test_two_band_rasters_need_bands_and_one_band_is_grey(trained, tmp_path, capsys):
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "two.tif", rng.integers(0, 255, (2, 64, 64), dtype=np.uint8), photometric="minisblack",
                     planarconfig="separate")
    assert run_predict(trained, [tmp_path / "two.tif"], tmp_path / "out") == 2
    one_error(capsys, "two.tif", "2 bands", "--bands")
    assert not (tmp_path / "out").exists()
    assert run_predict(trained, [tmp_path / "two.tif"], tmp_path / "out", "--bands", "0", "1", "1") == 0
    grey = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "one.tif", grey)
    assert np.array_equal(read_image(tmp_path / "one.tif"), np.repeat(grey[..., None], 3, axis=-1))
    assert "two bands need --bands" in predict.__doc__.replace("\n", " ")


# -------------------------------------------------------------------------------------------- resuming
def test_resume_keeps_the_csv_row_of_a_damaged_json_line(trained):
    assert train.cli_main(["--epochs", "2", "--out", str(trained), "--resume", *TINY]) == 0
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    (trained / "metrics.jsonl").write_text(lines[0][:20] + "\n" + lines[1] + "\n")  # epoch 1's line torn
    with pytest.warns(UserWarning, match="line 1 is damaged"):
        assert train.cli_main(["--epochs", "3", "--out", str(trained), "--resume", *TINY]) == 0
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["loss"] == pytest.approx(row["loss"]) and rows[0]["val_mIoU"] == pytest.approx(row["val_mIoU"])


def test_resume_refuses_a_changed_hyper_parameter_and_records_allowed_changes(trained, capsys):
    before = (trained / "train_config.json").read_text()
    assert train.cli(["--epochs", "2", "--out", str(trained), "--resume", "--lr", "0.5", *TINY]) == 2
    one_error(capsys, "lr", "0.0004", "0.5", "--overwrite")
    assert (trained / "train_config.json").read_text() == before
    assert train.cli_main(["--epochs", "2", "--out", str(trained), "--resume", *TINY]) == 0
    record = [json.loads(line) for line in (trained / "resumes.jsonl").read_text().splitlines()]
    assert record[-1]["epoch"] == 1 and record[-1]["changed"] == {"epochs": [1, 2]}


# --------------------------------------------------------------------------------------- the model's input
def test_the_model_refuses_an_empty_batch_and_a_foreign_dtype(trained):
    from lovlanet import load_model

    model = load_model(trained / "best.pt").eval()
    with pytest.raises(ValueError, match="batch of 0"):
        model(torch.zeros(0, 3, 64, 64))
    with pytest.raises(ValueError, match="float16.*float32.*autocast"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.float16))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.zeros(1, 3, 64, 64, dtype=torch.bfloat16)).shape == (1, 6, 64, 64)


# ----------------------------------------------------------------------------------------- instant help
TOOLS = ["lovlanet.train", "lovlanet.evaluate", "lovlanet.predict", "lovlanet.quickstart", "lovlanet.summary",
         "kkattn.demo"]
HELP = textwrap.dedent("""
    import argparse, contextlib, importlib, io, sys
    seen = []
    real = argparse.ArgumentParser.parse_args

    def parse_args(self, *args, **kwargs):  # the tool's own parser, whatever builds it
        seen.append(self)
        return real(self, *args, **kwargs)

    argparse.ArgumentParser.parse_args = parse_args
    module = importlib.import_module(sys.argv[1])
    entry = getattr(module, "cli", None) or module.main
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            code = entry(["--help"])
        except SystemExit as exc:
            code = exc.code
    heavy = sorted(name for name in ("torch", "timm", "open_clip", "rasterio", "triton") if name in sys.modules)
    bare = [a.option_strings or [a.dest] for parser in seen for a in parser._actions if not a.help]
    print(repr((code, heavy, bare, text.getvalue())))
""")


@pytest.mark.parametrize("module", TOOLS)
def test_help_answers_before_torch_loads_and_every_option_is_explained(module):
    import ast

    result = subprocess.run([sys.executable, "-c", HELP, module], capture_output=True, text=True, timeout=120, cwd=ROOT)
    code, heavy, bare, text = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert code in (0, None) and heavy == [], (module, heavy, result.stderr[-2000:])
    assert bare == [], f"{module}: options without help text: {bare}"
    assert "``" not in text and ":func:" not in text  # no reStructuredText markup


# ------------------------------------------------------------------------------------------- precision
def test_precision_runs_the_model_under_autocast_and_keeps_fp32_sums(trained, tmp_path, capsys):
    from lovlanet import load_model
    from lovlanet.inference import predict_image

    model = load_model(trained / "best.pt").eval()
    seen = []
    model.alignment.register_forward_hook(lambda module, args, out: seen.append(out[0].dtype))
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    fp32 = predict_image(model, image, tile=64)
    bf16 = predict_image(model, image, tile=64, precision="bf16")
    assert set(seen) == {torch.float32, torch.bfloat16}
    assert (fp32 == bf16).mean() > 0.8  # the same labels but for near ties
    with pytest.raises(ValueError, match="precision"):
        predict_image(model, image, tile=64, precision="fp8")
    Image.fromarray(image).save(tmp_path / "a.png")
    assert run_predict(trained, [tmp_path / "a.png"], tmp_path / "out", "--precision", "bf16") == 0
    assert run_predict(trained, [tmp_path / "a.png"], tmp_path / "out2", "--precision", "fp8") == 2
    one_error(capsys, "--precision")
