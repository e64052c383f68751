"""Dataset loaders on small trees the tests write, the synthetic set, augmentation, sliding windows."""
import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from lovlanet.data import GID, DataError, ImageFolder, LoveDA, SyntheticLandCover, TrainAugment, build_dataset
from lovlanet.data.synthetic import CLASSES, generate_scene
from lovlanet.inference import predict_image


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ------------------------------------------------------------------------------------------ LoveDA
@pytest.fixture
def loveda_root(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("Train", "Val"):
        for domain in ("Urban", "Rural"):
            for i in range(2):
                _png(tmp_path / split / domain / "images_png" / f"{i}.png", rng.integers(0, 255, (64, 96, 3), np.uint8))
                _png(tmp_path / split / domain / "masks_png" / f"{i}.png", rng.integers(0, 8, (64, 96), np.uint8))
    return tmp_path


def test_loveda_maps_raw_values(loveda_root):
    raw = np.asarray(Image.open(loveda_root / "Train" / "Urban" / "masks_png" / "0.png"))
    fg = LoveDA(loveda_root, "train", domain="urban")
    mask = fg[0]["mask"].numpy()
    assert fg.classes == ("building", "road", "water", "barren", "forest", "agriculture")
    assert (mask[raw <= 1] == 255).all() and (mask[raw >= 2] == raw[raw >= 2] - 2).all()
    keep = LoveDA(loveda_root, "TRAIN", domain="urban", background="class")
    mask = keep[0]["mask"].numpy()
    assert keep.classes[0] == "background"
    assert (mask[raw == 0] == 255).all() and (mask[raw >= 1] == raw[raw >= 1] - 1).all()
    assert len(LoveDA(loveda_root, "val")) == 4 and fg[0]["image"].shape == (3, 64, 96)


def test_loveda_errors_name_the_path(loveda_root):
    (loveda_root / "Val" / "Rural" / "masks_png" / "1.png").unlink()
    with pytest.raises(DataError, match="1.png"):
        LoveDA(loveda_root, "val")
    with pytest.raises(DataError, match="images_png"):
        LoveDA(loveda_root / "nowhere", "train")
    with pytest.raises(ValueError, match="split"):
        LoveDA(loveda_root, "training")
    _png(loveda_root / "Train" / "Urban" / "masks_png" / "0.png", np.full((64, 96), 9, np.uint8))
    with pytest.raises(DataError, match="mask value 9"):
        LoveDA(loveda_root, "train")[0]


# --------------------------------------------------------------------------------------------- GID
GID_RGB = np.array([(255, 0, 0), (0, 255, 0), (0, 255, 255), (255, 255, 0), (0, 0, 255), (0, 0, 0)], np.uint8)


@pytest.fixture
def gid_root(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "image_RGB").mkdir()
    (tmp_path / "image_NirRGB").mkdir()
    (tmp_path / "label_5classes").mkdir()
    for i in range(10):
        labels = rng.integers(0, 6, (70, 90))
        tifffile.imwrite(tmp_path / "image_RGB" / f"scene{i}.tif", rng.integers(0, 255, (70, 90, 3), np.uint8))
        tifffile.imwrite(tmp_path / "image_NirRGB" / f"scene{i}.tif", rng.integers(0, 255, (70, 90, 4), np.uint8))
        tifffile.imwrite(tmp_path / "label_5classes" / f"scene{i}_label.tif", GID_RGB[labels])
        np.save(tmp_path / f"labels{i}.npy", labels)
    return tmp_path


def test_gid_colours_tiles_and_splits(gid_root):
    ds = GID(gid_root, "all", tile=32, stride=32, edge="shift")
    assert len(ds.scenes) == 10 and len(ds) == 10 * 3 * 3  # rows 0,32,38 ; cols 0,32,58
    labels = np.load(gid_root / "labels0.npy")
    want = np.where(labels == 5, 255, labels)
    item = next(ds[i] for i in range(len(ds)) if ds.tiles[i] == (0, 38, 58))
    np.testing.assert_array_equal(item["mask"].numpy(), want[38:70, 58:90])  # red → built-up (RGB, not BGR)
    padded = GID(gid_root, "all", tile=32, edge="pad")
    corner = next(padded[i] for i in range(len(padded)) if padded.tiles[i] == (0, 64, 64))
    assert (corner["mask"][6:] == 255).all() and (corner["image"][:, 6:] == 0).all()
    splits = [GID(gid_root, s, tile=64).scenes for s in ("train", "val", "test")]
    names = [p.stem for split in splits for p, _ in split]
    assert sorted(names) == sorted(f"scene{i}" for i in range(10)) and all(splits)  # disjoint and complete
    (gid_root / "splits").mkdir()
    (gid_root / "splits" / "test.txt").write_text("scene3\n")
    assert [p.stem for p, _ in GID(gid_root, "test", tile=64).scenes] == ["scene3"]
    nir = GID(gid_root, "all", tile=64, image_dir="image_NirRGB", bands=(1, 2, 3))
    raw = tifffile.imread(gid_root / "image_NirRGB" / "scene0.tif")
    np.testing.assert_array_equal(nir[0]["image"].permute(1, 2, 0).numpy(), raw[:64, :64, 1:4])


def test_gid_unknown_colour_names_file_and_colour(gid_root):
    label = tifffile.imread(gid_root / "label_5classes" / "scene2_label.tif")
    label[3, 4] = (12, 34, 56)
    tifffile.imwrite(gid_root / "label_5classes" / "scene2_label.tif", label)
    ds = GID(gid_root, "all", tile=64)
    with pytest.raises(DataError, match=r"scene2_label.tif: unknown label colour \(12, 34, 56\)"):
        ds.scene(2)
    (gid_root / "label_5classes" / "scene4_label.tif").unlink()
    with pytest.raises(DataError, match="scene4"):
        GID(gid_root, "all")


# ------------------------------------------------------------------------------------------ folder
def test_image_folder_with_class_map(tmp_path):
    rng = np.random.default_rng(2)
    _png(tmp_path / "images" / "a.png", rng.integers(0, 255, (40, 50, 3), np.uint8))
    _png(tmp_path / "images" / "b.jpg", rng.integers(0, 255, (40, 50, 3), np.uint8))
    assert len(ImageFolder(tmp_path)) == 2 and ImageFolder(tmp_path).masks is False
    mask = rng.integers(0, 3, (40, 50)).astype(np.uint8)
    mask[0, 0] = 255
    _png(tmp_path / "masks" / "a.png", mask)
    with pytest.raises(DataError, match="classes.json"):
        ImageFolder(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["x", "y", "z"], "ignore_index": 255}))
    with pytest.raises(DataError, match="b.jpg has no mask"):
        ImageFolder(tmp_path)
    _png(tmp_path / "masks" / "b.png", np.full((40, 50), 7, np.uint8))
    ds = ImageFolder(tmp_path)
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), mask)
    with pytest.raises(DataError, match="b.png: mask value 7"):
        ds[1]


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png"):
        ImageFolder(tmp_path)[0]
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("cityscapes", tmp_path)


# --------------------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_covers_every_class():
    a, b = SyntheticLandCover("train", 4, size=128), SyntheticLandCover("train", 4, size=128)
    assert torch.equal(a[2]["image"], b[2]["image"]) and torch.equal(a[2]["mask"], b[2]["mask"])
    assert not torch.equal(a[0]["image"], SyntheticLandCover("val", 4, size=128)[0]["image"])
    present = set()
    for seed in range(6):
        present |= set(np.unique(generate_scene((9, seed), 128)[1]).tolist())
    assert present == set(range(len(CLASSES)))


def test_synthetic_roads_are_connected():
    from scipy import ndimage

    for seed in range(5):
        _, mask = generate_scene((3, seed), 192)
        # roads are drawn after water (bridges) and buildings avoid them: one 8-connected network
        _, n = ndimage.label(mask == 1, structure=np.ones((3, 3)))
        assert n == 1


def test_train_augment_keeps_labels_and_pads_with_ignore():
    torch.manual_seed(0)
    item = SyntheticLandCover("train", 1, size=128)[0]
    out = TrainAugment(160, scale=(0.5, 0.6))(item)  # smaller than the crop → padded
    assert out["image"].shape == (3, 160, 160) and out["image"].dtype == torch.uint8
    values = set(out["mask"].unique().tolist())
    assert 255 in values and values - {255} <= set(item["mask"].unique().tolist())


# ---------------------------------------------------------------------------------- sliding window
class _PixelModel(torch.nn.Module):
    """Logits from a fixed 3×3 conv: position-dependent near tile borders, so overlaps matter."""

    class config:
        mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        assert x.shape[-1] % 32 == 0 and x.shape[-2] % 32 == 0
        return self.conv(x)


def _naive(model, image, tile, overlap):
    from lovlanet.data.transforms import normalize
    from lovlanet.inference import window_starts

    h, w = image.shape[:2]
    x = normalize(torch.from_numpy(image).permute(2, 0, 1)[None], model.config.mean, model.config.std)
    acc = torch.zeros(4, h, w)
    stride = int(tile * (1 - overlap))
    for y0 in window_starts(h, tile, stride):
        for x0 in window_starts(w, tile, stride):
            acc[:, y0:y0 + tile, x0:x0 + tile] += model(x[:, :, y0:y0 + tile, x0:x0 + tile])[0].softmax(0)
    return acc.argmax(0).numpy()


@pytest.mark.parametrize("shape", [(150, 200), (64, 96), (97, 64)])
def test_band_by_band_sliding_window_equals_full_accumulation(shape):
    model = _PixelModel()
    image = np.random.default_rng(0).integers(0, 255, (*shape, 3), np.uint8)
    with torch.no_grad():
        got = predict_image(model, image, tile=64, overlap=0.25, batch_size=3, device="cpu")
        if shape[0] >= 64 and shape[1] >= 64:
            np.testing.assert_array_equal(got, _naive(model, image, 64, 0.25))
    assert got.shape == shape and got.dtype == np.uint8
