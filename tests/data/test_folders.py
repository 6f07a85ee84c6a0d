"""Tests for pcdarts.data.folders, pcdarts.data.transforms and pcdarts.data.subset: image-folder dataset, transforms,
loader, subsets."""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.utils.data.dataloader as dl_module
from PIL import Image

from pcdarts.cli.tools import add_subset_subcommand
from pcdarts.data import folders
from pcdarts.data.folders import (
    FolderError,
    ImageFolderDataset,
    folder_info,
    load_folder_as_tensor,
    make_folder_loader,
)
from pcdarts.data.subset import build_subset
from pcdarts.data.transforms import (
    CenterCrop,
    ColorJitter,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
    eval_transform,
    train_transform,
)
from tests.conftest import CLI_TINY_CPU1, one_line_error, run_cli

CLASSES = ("cat", "dog", "emu")
COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


def make_folder(root: Path, per_class: int = 10, size: tuple[int, int] = (20, 24),
                classes: tuple[str, ...] = CLASSES) -> Path:
    """``root/<class>/img_XX.png``: width x height = size, a distinct colour per class."""
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        base = COLOURS.get(c, (120, 120, 120))
        for i in range(per_class):
            colour = tuple(min(255, v + i) for v in base)
            Image.new("RGB", size, colour).save(root / c / f"img_{i:02d}.png")
    return root


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "data")


def gradient_image(w: int = 40, h: int = 30) -> Image.Image:
    img = Image.new("RGB", (w, h))
    img.putdata([(x * 6 % 256, y * 8 % 256, (x + y) * 3 % 256) for y in range(h) for x in range(w)])
    return img


# ------------------------------------------------------------------------------ dataset
def test_dataset_length_labels_and_class_order(folder: Path) -> None:
    ds = ImageFolderDataset(folder)
    assert len(ds) == 30
    assert ds.classes == list(CLASSES)
    assert ds.class_to_idx == {"cat": 0, "dog": 1, "emu": 2}
    assert ds.targets == [0] * 10 + [1] * 10 + [2] * 10
    x, y = ds[12]
    assert y == 1 and x.dtype == torch.float32 and x.shape == (3, 24, 20)
    assert torch.allclose(x[:, 0, 0], torch.tensor([32, 202, 32]) / 255.0)
    assert Path(ds.samples[12][0]).name == "img_02.png"  # files sorted within a class
    grey = ImageFolderDataset(folder, channels=1)
    assert grey[0][0].shape == (1, 24, 20)
    only = ImageFolderDataset(folder, class_to_idx={"emu": 0, "cat": 1})
    assert len(only) == 20 and only.classes == ["emu", "cat"] and only.targets[:10] == [0] * 10


def test_folder_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FolderError, match="no such folder"):
        ImageFolderDataset(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FolderError, match=r"empty.*no class sub-folders.*<class_name>"):
        ImageFolderDataset(empty)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "a.png")
    with pytest.raises(FolderError, match="flat"):
        ImageFolderDataset(flat)
    bad = make_folder(tmp_path / "bad", per_class=2)
    (bad / "zebra").mkdir()
    (bad / "zebra" / "notes.txt").write_text("not an image")
    with pytest.raises(FolderError, match=r"zebra.*no images"):
        ImageFolderDataset(bad)
    assert issubclass(FolderError, ValueError)


def test_unreadable_image_names_the_file(folder: Path) -> None:
    (folder / "dog" / "broken.png").write_bytes(b"definitely not a png")
    ds = ImageFolderDataset(folder)
    idx = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("broken.png"))
    with pytest.raises(FolderError, match="broken.png"):
        ds[idx]


def test_folder_info(folder: Path) -> None:
    info = folder_info(folder)
    assert info["num_classes"] == 3 and info["classes"] == list(CLASSES)
    assert info["counts"] == {"cat": 10, "dog": 10, "emu": 10} and info["num_images"] == 30
    assert tuple(info["sample_image_size"]) == (20, 24)



@pytest.mark.parametrize("source", ["folder", "unlabelled"])
def test_a_corrupt_first_image_is_skipped_with_skip(tmp_path: Path, source: str) -> None:
    """The first file in sort order is unreadable: ``skip`` leaves it out (the input size comes
    from the first readable image); ``fail`` names the file and the ``skip`` option."""
    from pcdarts.data.sources import load_dataset
    root = make_folder(tmp_path / "imgs", per_class=2, classes=("cat", "dog"))
    (root / "cat" / "aaa_broken.png").write_bytes(b"definitely not a png")
    with pytest.warns(UserWarning, match="skipped 1 of 5 image files"):
        ds = load_dataset(f"{source}:{root}", "train", bad_images="skip")
    assert ds.images.shape == (4, 3, 20, 20)
    with pytest.raises(FolderError, match=r"aaa_broken\.png: cannot read image .*--data\.bad_images skip"):
        load_dataset(f"{source}:{root}", "train")
    with pytest.raises(FolderError, match=r"aaa_broken\.png.*--data\.bad_images skip"):
        folder_info(root)
    assert tuple(folder_info(root, on_bad="skip")["sample_image_size"]) == (20, 24)
    for f in (root / "cat").iterdir():
        f.write_bytes(b"x")
    for f in (root / "dog").iterdir():
        f.write_bytes(b"x")
    with pytest.raises(FolderError, match="none of its 5 image files can be read"):
        folder_info(root, on_bad="skip")


@pytest.mark.parametrize("source", ["folder", "unlabelled"])
def test_a_missing_data_folder_is_called_missing(tmp_path: Path, source: str) -> None:
    from pcdarts.data.sources import load_dataset
    with pytest.raises(FolderError, match=rf"--data {source}:PATH .*MISSING' is not a folder: it does not exist; "
                                          "check the path$"):
        load_dataset(f"{source}:{tmp_path / 'MISSING'}", "train")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(FolderError, match="is not a folder but a file"):
        load_dataset(f"{source}:{tmp_path / 'file.png'}", "train")


# --------------------------------------------------------------------------- transforms
def test_transforms_shapes() -> None:
    img = gradient_image(40, 30)
    assert RandomResizedCrop(16, rng=random.Random(0))(img).size == (16, 16)
    assert RandomResizedCrop((8, 12), rng=random.Random(0))(img).size == (12, 8)
    assert Resize(15)(img).size == (20, 15)
    assert Resize((10, 7))(img).size == (7, 10)
    assert CenterCrop(12)(img).size == (12, 12)
    assert CenterCrop(50)(img).size == (50, 50)  # padded with black
    assert ColorJitter(rng=random.Random(0))(img).size == (40, 30)
    assert ColorJitter(rng=random.Random(0))(img.convert("L")).mode == "L"
    flipped = RandomHorizontalFlip(p=1.0)(img)
    assert flipped.getpixel((0, 0)) == img.getpixel((39, 0))
    u8 = ToTensor(torch.uint8)(img)
    assert u8.dtype == torch.uint8 and u8.shape == (3, 30, 40)
    f = ToTensor()(img)
    assert f.dtype == torch.float32 and float(f.max()) <= 1.0
    assert torch.equal((f * 255).round().to(torch.uint8), u8)
    n = Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(f)
    assert torch.allclose(n, f * 2 - 1)
    with pytest.raises(ValueError, match="channels"):
        Normalize()(ToTensor()(img.convert("L")))
    with pytest.raises(TypeError, match="float"):
        Normalize()(u8)


def test_train_transform_deterministic_under_seed() -> None:
    img = gradient_image()
    a = train_transform(16, rng=random.Random(3))
    b = train_transform(16, rng=random.Random(3))
    c = train_transform(16, rng=random.Random(4))
    xa = [a(img) for _ in range(4)]
    xb = [b(img) for _ in range(4)]
    assert xa[0].shape == (3, 16, 16) and xa[0].dtype == torch.float32
    assert all(torch.equal(p, q) for p, q in zip(xa, xb))
    assert not all(torch.equal(p, c(img)) for p in xa)
    # global `random` module when no rng is passed (what workers seed)
    g = train_transform(16, jitter=False)
    random.seed(7)
    first = g(img)
    random.seed(7)
    assert torch.equal(first, g(img))
    gen = torch.Generator().manual_seed(5)
    t = Compose([RandomResizedCrop(8, rng=gen), ToTensor()])
    once = t(img)
    gen.manual_seed(5)
    assert torch.equal(once, t(img))


def test_eval_transform_centre_crop() -> None:
    img = gradient_image(40, 30)
    t = eval_transform(16)  # resize shorter side to int(16 / 0.875) = 18, crop 16
    assert isinstance(t.transforms[0], Resize) and t.transforms[0].size == 18
    x = t(img)
    assert x.shape == (3, 16, 16)
    assert torch.equal(x, t(img))
    custom = eval_transform(16, resize=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    expect = ToTensor()(CenterCrop(16)(Resize(16)(img)))
    assert torch.allclose(custom(img), expect)


# ------------------------------------------------------------------------------ loaders
def _all_labels(loader) -> list[int]:
    return [int(y) for _, ys in loader for y in ys]


def test_loader_workers0_all_samples_and_seeded_shuffle(folder: Path) -> None:
    ds = ImageFolderDataset(folder, transform=eval_transform(8, resize=8))
    loader = make_folder_loader(ds, 4, shuffle=True, num_workers=0, seed=1)
    labels = _all_labels(loader)
    assert sorted(labels) == sorted(ds.targets) and labels != ds.targets
    again = make_folder_loader(ds, 4, shuffle=True, num_workers=0, seed=1)
    assert _all_labels(again) == labels
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 8, 8) and yb.dtype == torch.int64
    dropped = make_folder_loader(ds, 4, shuffle=False, num_workers=0, drop_last=True)
    assert len(dropped) == 7 and len(_all_labels(dropped)) == 28


def test_loader_two_workers(folder: Path) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPUs for num_workers=2")
    ds = ImageFolderDataset(folder, transform=train_transform(8, jitter=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = make_folder_loader(ds, 5, shuffle=True, num_workers=2, seed=0)
        epochs = [_all_labels(loader), _all_labels(loader)]
    if any("fell back" in str(w.message) or "falling back" in str(w.message) for w in caught):
        pytest.skip("this platform cannot start DataLoader worker processes")
    assert loader.num_workers == 2 and loader.persistent_workers
    for labels in epochs:
        assert sorted(labels) == sorted(ds.targets)


def test_loader_falls_back_when_workers_fail(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def __init__(self, loader) -> None:
            raise RuntimeError("unable to open shared memory object </torch_1_2> in read-write mode")

    monkeypatch.setattr(dl_module, "_MultiProcessingDataLoaderIter", Broken)
    monkeypatch.setattr(folders.os, "cpu_count", lambda: 8)
    ds = ImageFolderDataset(folder, transform=eval_transform(8, resize=8))
    loader = make_folder_loader(ds, 4, shuffle=True, num_workers=2, seed=0)
    with pytest.warns(RuntimeWarning, match=r"shared memory.*num_workers=0"):
        first = _all_labels(loader)
    assert sorted(first) == sorted(ds.targets)
    assert sorted(_all_labels(loader)) == sorted(ds.targets)  # keeps using the fallback


def test_loader_falls_back_when_too_many_workers(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folders.os, "cpu_count", lambda: 1)
    ds = ImageFolderDataset(folder, transform=eval_transform(8, resize=8))
    with pytest.warns(RuntimeWarning, match="exceeds os.cpu_count"):
        loader = make_folder_loader(ds, 6, shuffle=False, num_workers=3)
    assert loader.num_workers == 0 and not loader.persistent_workers
    assert _all_labels(loader) == ds.targets


def test_worker_seeding_reseeds_transform_rngs() -> None:
    rng_a, gen = random.Random(0), torch.Generator().manual_seed(0)
    ds = ImageFolderDataset.__new__(ImageFolderDataset)
    ds.transform = Compose([RandomResizedCrop(4, rng=rng_a), RandomHorizontalFlip(rng=rng_a),
                            RandomResizedCrop(4, rng=gen)])
    folders._reseed_transforms(ds, 123)
    assert rng_a.random() == random.Random(123).random()
    assert gen.initial_seed() == 124


# ------------------------------------------------------------------------ in-memory data
def test_load_folder_as_tensor(folder: Path) -> None:
    images, labels, classes = load_folder_as_tensor(folder, 12)
    assert images.shape == (30, 3, 12, 12) and images.dtype == torch.uint8
    assert labels.tolist() == [0] * 10 + [1] * 10 + [2] * 10 and classes == list(CLASSES)
    assert images[0, :, 5, 5].tolist() == [200, 30, 30]
    grey, _, _ = load_folder_as_tensor(folder, 8, channels=1)
    assert grey.shape == (30, 1, 8, 8)
    with pytest.raises(FolderError, match="streaming loader"):
        load_folder_as_tensor(folder, 12, max_bytes=30 * 3 * 12 * 12 - 1)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("loader", ["memory", "stream", "auto"])
def test_train_data_lists_each_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           loader: str, split: bool) -> None:
    # listing an ImageNet-sized folder takes seconds to minutes: build_train_data must do it once per folder
    from pcdarts.train import data as train_data
    from pcdarts.train.config import TrainDataConfig

    root = tmp_path / "imgs"
    if split:
        make_folder(root / "train", per_class=4)
        make_folder(root / "val", per_class=2)
    else:
        make_folder(root, per_class=4)
    scans: dict[Path, int] = {}
    real_scan = folders.scan_folder

    def counting_scan(path, *args, **kwargs):
        scans[Path(path)] = scans.get(Path(path), 0) + 1
        return real_scan(path, *args, **kwargs)

    for name, module in list(sys.modules.items()):  # wherever it was imported
        if name.startswith("pcdarts") and getattr(module, "scan_folder", None) is real_scan:
            monkeypatch.setattr(module, "scan_folder", counting_scan)
    d = TrainDataConfig(dataset="folder", path=str(root), loader=loader, workers=0)  # input_size from the images
    data = train_data.build_train_data(d, batch_size=4, eval_batch_size=4, seed=0, cutout=0, drop_last=False,
                                       device=torch.device("cpu"))
    assert scans == ({root / "train": 1, root / "val": 1} if split else {root: 1})
    assert data.info["loader"] == ("stream" if loader == "stream" else "memory")
    assert (data.info["n_train"], data.info["n_test"]) == ((12, 6) if split else (11, 1))
    assert (data.num_classes, data.in_channels, data.input_size) == (3, 3, 20)


# -------------------------------------------------------------------------------- subset
def test_subset_fractions_disjoint_and_json(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", per_class=40)
    record = build_subset(src, tmp_path / "dst", train=0.1, arch=0.025, seed=0)
    dst = tmp_path / "dst"
    for c in CLASSES:
        train = sorted(p.name for p in (dst / "train" / c).iterdir())
        arch = sorted(p.name for p in (dst / "arch" / c).iterdir())
        assert len(train) == 4 and len(arch) == 1 and not set(train) & set(arch)
        assert (dst / "train" / c / train[0]).is_symlink()
        assert record["files"]["train"][c] == train and record["files"]["arch"][c] == arch
        assert record["counts"][c] == {"total": 40, "train": 4, "arch": 1}
    on_disk = json.loads((dst / "subset.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert on_disk["seed"] == 0 and on_disk["fractions"] == {"train": 0.1, "arch": 0.025}
    assert on_disk["source"] == str(src.resolve())
    # the subsets are valid image folders themselves
    assert len(ImageFolderDataset(dst / "train")) == 12 and len(ImageFolderDataset(dst / "arch")) == 3


def test_subset_rounding_and_minimum(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", per_class=5, classes=("a", "b"))
    rec = build_subset(src, tmp_path / "dst", train=0.1, arch=0.1)  # 0.5 -> 1 each
    assert rec["counts"]["a"] == {"total": 5, "train": 1, "arch": 1}
    rec = build_subset(src, tmp_path / "dst2", train=0.5, arch=0.5)  # 2.5 + 2.5 -> 3 + 2
    assert rec["counts"]["b"] == {"total": 5, "train": 3, "arch": 2}


def test_subset_reproducible_and_per_class_seeding(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", per_class=40)
    a = build_subset(src, tmp_path / "a", seed=0)["files"]
    b = build_subset(src, tmp_path / "b", seed=0)["files"]
    c = build_subset(src, tmp_path / "c", seed=1)["files"]
    assert a == b and a != c
    make_folder(src, per_class=40, classes=("aardvark",))  # a new class sorts first
    d = build_subset(src, tmp_path / "d", seed=0)["files"]
    assert all(d[s][k] == a[s][k] for s in ("train", "arch") for k in CLASSES)


def test_subset_link_modes_and_overwrite(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", per_class=20, classes=("a",))
    dst = tmp_path / "dst"
    build_subset(src, dst, link="copy")
    f = next((dst / "train" / "a").iterdir())
    with Image.open(f) as img:
        assert not f.is_symlink() and img.size == (20, 24)
    with pytest.raises(FileExistsError, match="not empty.*--overwrite"):
        build_subset(src, dst, link="copy")
    build_subset(src, dst, link="hardlink", overwrite=True, seed=5)
    f = next((dst / "train" / "a").iterdir())
    assert os.stat(f).st_nlink == 2
    assert json.loads((dst / "subset.json").read_text())["seed"] == 5


@pytest.mark.parametrize("train,arch", [(0.0, 0.1), (1.0, 0.1), (0.1, 0.0), (0.1, 1.5), (0.8, 0.3)])
def test_subset_bad_fractions(tmp_path: Path, train: float, arch: float) -> None:
    src = make_folder(tmp_path / "src", per_class=4, classes=("a",))
    with pytest.raises(ValueError, match=r"\(0, 1\).*train \+ arch <= 1"):
        build_subset(src, tmp_path / "dst", train=train, arch=arch)
    assert not (tmp_path / "dst").exists()


def test_subset_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="link"):
        build_subset(tmp_path, tmp_path / "x", link="move")
    src = make_folder(tmp_path / "src", per_class=1, classes=("solo",))
    with pytest.raises(FolderError, match="solo"):
        build_subset(src, tmp_path / "dst")
    with pytest.raises(ValueError, match="inside the source"):
        build_subset(src, src / "out")


def test_subset_cli_handler(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_folder(tmp_path / "src", per_class=40)
    parser = argparse.ArgumentParser(prog="pcdarts")
    add_subset_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["subset", str(src), str(tmp_path / "dst"), "--train", "0.1",
                              "--arch", "0.025", "--seed", "3", "--link", "copy"])
    assert args.func(args) == 0
    assert "3 classes" in capsys.readouterr().out
    rec = json.loads((tmp_path / "dst" / "subset.json").read_text())
    assert rec["seed"] == 3 and rec["link"] == "copy" and rec["totals"]["train"] == 12
    assert args.func(args) == 2  # non-empty DST
    assert "--overwrite" in capsys.readouterr().err
    args = parser.parse_args(["subset", str(src), str(tmp_path / "dst"), "--overwrite"])
    assert args.func(args) == 0 and args.link == "symlink"
    args = parser.parse_args(["subset", str(tmp_path / "nowhere"), str(tmp_path / "d2")])
    assert args.func(args) == 2
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["subset", str(src), str(tmp_path / "d3"), "--link", "move"])


# moved from the issue-12 grab-bag (crash safety, bad input, TensorBoard)

def _image_folder(root: Path, n: int = 6) -> Path:
    from PIL import Image
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (12, 12), (40 * i, 0, 0) if cls == "a" else (0, 40 * i, 0)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("damage,named", [
    ("text", "bad.png"),           # a non-image file with an image extension
    ("truncated", "0.png"),        # a cut-off image
    ("empty_class", "c"),          # a class folder without images
])
def test_bad_image_folders_are_named(tmp_path, capsys, damage, named):
    root = _image_folder(tmp_path / "imgs")
    if damage == "text":
        (root / "a" / "bad.png").write_text("not an image")
    elif damage == "truncated":
        data = (root / "a" / "0.png").read_bytes()
        (root / "a" / "0.png").write_bytes(data[:20])
    else:
        (root / "c").mkdir()
    code, _, err = run_cli(["search", "--data", f"folder:{root}", "--out", tmp_path / "r", *CLI_TINY_CPU1], capsys)
    line = one_line_error(err)
    assert code == 2 and named in line and not (tmp_path / "r").exists(), line


def test_bad_images_skip_leaves_them_out_with_a_count_and_mixed_sizes_are_resized(tmp_path, capsys):
    from PIL import Image
    root = _image_folder(tmp_path / "imgs", n=12)
    (root / "a" / "bad.png").write_text("not an image")
    Image.new("L", (20, 16), 128).save(root / "b" / "grey_and_larger.png")  # another size and mode
    code, out, err = run_cli(["search", "--data", f"folder:{root}", "--data.bad_images", "skip",
                              "--out", tmp_path / "r", *CLI_TINY_CPU1], capsys)
    assert code == 0, err
    warning = [ln for ln in err.splitlines() if "skipped 1 of 26 image files" in ln]
    assert len(warning) == 1 and "bad.png" in warning[0] and "Traceback" not in err
    # the same folder for training (in memory) and with the default, fail
    code, _, err = run_cli(["train", "DARTS_V2", "--data", f"folder:{root}", "--data.bad_images", "skip",
                            "--out", tmp_path / "t", "--train.epochs", "1", "--model.C", "4", "--model.layers", "2",
                            "--train.batch_size", "4", "--no-progress"], capsys)
    assert code == 0 and "skipped 1 of" in err, err
    code, _, err = run_cli(["train", "DARTS_V2", "--data", f"folder:{root}", "--data.bad_images", "skip",
                            "--data.loader", "stream", "--data.workers", "0", "--out", tmp_path / "s",
                            "--train.epochs", "1", "--model.C", "4", "--model.layers", "2", "--train.batch_size", "4",
                            "--no-progress"], capsys)
    assert code == 0 and "skipped 1 of" in err, err  # streamed: every file decoded once up front
    code, _, err = run_cli(["search", "--data", f"folder:{root}", "--out", tmp_path / "f", *CLI_TINY_CPU1], capsys)
    assert code == 2 and "bad.png" in one_line_error(err)
    code, _, err = run_cli(["search", "--data.bad_images", "skip", "--out", tmp_path / "g", *CLI_TINY_CPU1], capsys)
    assert code == 2 and "data.bad_images" in one_line_error(err) and "image folders" in err
