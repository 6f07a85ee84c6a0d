"""Dataset sources (pcdarts.data.sources) and the device-resident loader (pcdarts.data.device_loader)."""
from __future__ import annotations

import io
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pcdarts.data.device_loader import Augment, DeviceLoader
from pcdarts.data.sources import (
    DataError,
    ImageDataset,
    dataset_fingerprint,
    load_dataset,
    split_indices,
)
from tests.conftest import CLI_TINY, CLI_TINY_CPU1, one_line_error, run_cli

REAL_CIFAR10 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar-10-batches-py"


# ----------------------------------------------------------------------------- helpers


def _write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the python-2 protocol of the official archive


def _fake_batch(n: int, seed: int, label_key: str = "labels", num_classes: int = 10) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "batch_label": f"fake batch {seed}",
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, size=n)],
    }


def _fake_cifar10(root: Path, n: int = 4, batches: tuple[int, ...] = (1, 2, 3, 4, 5)) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in batches:
        _write_pickle(folder / f"data_batch_{i}", _fake_batch(n, seed=i))
    _write_pickle(folder / "test_batch", _fake_batch(n, seed=99))
    _write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    return folder


def _make_tar(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return dest


def _images(n: int = 12, c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, c, h, w), generator=g, dtype=torch.uint8)  # >= 1: zeros only from cutout


def _loader(images: torch.Tensor, bs: int = 4, **kw) -> DeviceLoader:
    kw.setdefault("mean", 0.5)
    kw.setdefault("std", 0.25)
    return DeviceLoader(images, torch.arange(images.shape[0]), bs, **kw)


# ----------------------------------------------------------------------------- digits / splits


def test_digits_loads_and_is_deterministic():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    assert isinstance(train, ImageDataset)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.images.shape[1:] == (1, 16, 16) and train.in_channels == 1 and train.input_size == 16
    assert train.num_classes == 10 and len(train.mean) == len(train.std) == 1
    assert len(train) + len(test) == 1797 and 0.75 < len(train) / 1797 < 0.85
    assert set(train.labels.unique().tolist()) == set(range(10)) == set(test.labels.unique().tolist())
    again = load_dataset("digits")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert dataset_fingerprint(again) == dataset_fingerprint(train) != dataset_fingerprint(test)
    # disjoint: no test image (with its label) appears in train
    train_keys = {(bytes(x.numpy().tobytes()), int(y)) for x, y in zip(train.images, train.labels)}
    overlap = sum((bytes(x.numpy().tobytes()), int(y)) in train_keys for x, y in zip(test.images, test.labels))
    assert overlap == 0


def test_load_dataset_errors():
    with pytest.raises(DataError, match="cifar10:/"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="cifar10, cifar100, digits"):
        load_dataset("imagenet:/x")
    with pytest.raises(DataError, match="split"):
        load_dataset("digits", "val")
    with pytest.raises(DataError, match="no path"):
        load_dataset("digits:/tmp")


def test_synthetic_dataset_is_seeded_and_checks_its_spec():
    a, b = load_dataset("synthetic:8x3x20"), load_dataset("synthetic:8x3x20")
    assert a.images.shape == (20, 3, 8, 8) and a.images.dtype == torch.uint8 and a.num_classes == 10
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, load_dataset("synthetic:8x3x20", "test").images)
    for bad in ("synthetic:8x3", "synthetic:8x3x0", "synthetic:axbxc"):
        with pytest.raises(DataError, match="SIZExCHANNELSxCOUNT"):
            load_dataset(bad)


def test_split_indices():
    a, b = split_indices(101, 0.5, seed=3)
    assert len(a) == round(101 * 0.5) and len(a) + len(b) == 101
    assert sorted(torch.cat([a, b]).tolist()) == list(range(101))
    a2, b2 = split_indices(101, 0.5, seed=3)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert not torch.equal(a, split_indices(101, 0.5, seed=4)[0])
    assert len(split_indices(10, 0.0, 0)[0]) == 0 and len(split_indices(10, 1.0, 0)[1]) == 0
    with pytest.raises(DataError, match="portion"):
        split_indices(10, 1.5, 0)


# ----------------------------------------------------------------------------- CIFAR archives


def test_cifar10_folder_parent_and_tar_agree(tmp_path):
    folder = _fake_cifar10(tmp_path / "src")
    tar = _make_tar(folder, tmp_path / "cifar-10-python.tar.gz")
    from_folder = load_dataset(f"cifar10:{folder}")
    from_parent = load_dataset(f"cifar10:{folder.parent}")
    from_tar = load_dataset(f"cifar10:{tar}")
    assert from_folder.images.shape == (20, 3, 32, 32) and from_folder.num_classes == 10
    assert from_folder.classes == [f"class{i}" for i in range(10)] == from_tar.classes
    for other in (from_parent, from_tar):
        assert torch.equal(other.images, from_folder.images) and torch.equal(other.labels, from_folder.labels)
    # CHW row layout: row 0's first 1024 bytes are the red plane
    raw = _fake_batch(4, seed=1)
    assert torch.equal(from_folder.images[0, 0].flatten(), torch.from_numpy(raw["data"][0, :1024].copy()))
    assert from_folder.labels[:4].tolist() == raw["labels"]
    test = load_dataset(f"cifar10:{tar}", "test")
    assert len(test) == 4 and test.labels.tolist() == _fake_batch(4, seed=99)["labels"]


def test_cifar10_missing_batches_warn(tmp_path):
    folder = _fake_cifar10(tmp_path, batches=(1, 2))
    with pytest.warns(UserWarning, match="2 of 5"):
        ds = load_dataset(f"cifar10:{folder}")
    assert len(ds) == 8


def test_cifar_bad_paths_and_corrupt_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere.*data_batch_1"):
        load_dataset(f"cifar10:{missing}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset(f"cifar10:{empty}")

    folder = _fake_cifar10(tmp_path / "src")
    tar_bytes = _make_tar(folder, tmp_path / "good.tar.gz").read_bytes()
    bad_tar = tmp_path / "cut.tar.gz"
    bad_tar.write_bytes(tar_bytes[: len(tar_bytes) // 2])
    with pytest.raises(DataError, match="cut.tar.gz"):
        load_dataset(f"cifar10:{bad_tar}")

    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError, match=r"data_batch_3.*not a valid CIFAR python pickle"):
        load_dataset(f"cifar10:{folder}")
    _write_pickle(batch, {"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]})
    with pytest.raises(DataError, match="data_batch_3.*3072"):
        load_dataset(f"cifar10:{folder}")


def test_cifar_rejects_foreign_pickle_globals(tmp_path):
    folder = _fake_cifar10(tmp_path)
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": io.BytesIO(b"x"), "labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="data_batch_1.*unexpected global"):
        load_dataset(f"cifar10:{folder}")


def test_cifar100_fake_archive(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, seed in (("train", 1), ("test", 2)):
        batch = _fake_batch(6, seed, label_key="fine_labels", num_classes=100)
        batch["coarse_labels"] = [0] * 6
        _write_pickle(folder / split, batch)
    _write_pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    tar = _make_tar(folder, tmp_path / "cifar-100-python.tar.gz")
    for spec in (f"cifar100:{folder}", f"cifar100:{tmp_path}", f"cifar100:{tar}"):
        ds = load_dataset(spec)
        assert ds.images.shape == (6, 3, 32, 32) and ds.num_classes == 100 and len(ds.classes) == 100
        assert ds.labels.tolist() == _fake_batch(6, 1, "fine_labels", 100)["fine_labels"]
    assert len(load_dataset(f"cifar100:{tar}", "test")) == 6


@pytest.mark.data
def test_real_cifar10_batch():
    if not (REAL_CIFAR10 / "data_batch_1").is_file():
        pytest.skip(f"real CIFAR-10 batch not found at {REAL_CIFAR10}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # only 1 of 5 training batches is shipped
        ds = load_dataset(f"cifar10:{REAL_CIFAR10}")
    assert ds.images.shape == (10000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert torch.bincount(ds.labels, minlength=10).tolist() == [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
    assert ds.classes is not None and ds.classes[0] == "airplane"


# ----------------------------------------------------------------------------- DeviceLoader


def test_loader_shapes_and_normalisation():
    imgs = _images(10)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    loader = DeviceLoader(imgs, torch.arange(10), 4, mean=mean, std=std, shuffle=False)
    assert loader.steps_per_epoch == len(loader) == 2
    x, y = loader.next()
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (4, 3, 8, 8)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (imgs[:4].float() / 255 - m) / s)
    assert y.tolist() == [0, 1, 2, 3]
    for aug in (None, Augment(crop_padding=2, flip=True, cutout=3)):
        xc, _ = _loader(imgs, channels_last=True, augment=aug).next()
        assert xc.is_contiguous(memory_format=torch.channels_last)


def test_epoch_covers_every_sample_once_without_drop_last():
    loader = _loader(_images(10), bs=4, drop_last=False, augment=Augment(4, True, 3))
    assert loader.steps_per_epoch == 3
    for _ in range(2):  # two epochs, each a fresh permutation
        ys = [y for _, y in loader]
        assert [len(y) for y in ys] == [4, 4, 2]
        assert sorted(torch.cat(ys).tolist()) == list(range(10))
    assert loader.epoch == 1


def test_seeds_and_batch_size_check():
    def order(seed):
        loader = _loader(_images(32), bs=8, seed=seed)
        return torch.cat([y for _, y in loader])

    assert torch.equal(order(0), order(0)) and not torch.equal(order(0), order(1))
    with pytest.raises(DataError, match="batch_size 20.*12 samples"):
        _loader(_images(12), bs=20)


def test_state_dict_resume_is_bit_identical():
    kw = dict(bs=4, augment=Augment(crop_padding=2, flip=True, cutout=3), seed=7)
    ref = _loader(_images(18), **kw)  # 4 steps per epoch
    for _ in range(3):
        ref.next()
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    expected = [ref.next() for _ in range(6)]  # crosses an epoch boundary

    resumed = _loader(_images(18), **{**kw, "seed": 123})
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert (resumed.epoch, resumed.position) == (0, 3)
    for (xe, ye), (xr, yr) in zip(expected, (resumed.next() for _ in range(6))):
        assert torch.equal(xe, xr) and torch.equal(ye, yr)
    with pytest.raises(DataError, match="batch_size"):
        _loader(_images(18), bs=2).load_state_dict(ref.state_dict())


def test_crop_is_a_shifted_window_of_the_padded_image():
    imgs, pad = _images(6), 2
    x, y = _loader(imgs, bs=6, shuffle=False, augment=Augment(crop_padding=pad), mean=0.0, std=1.0).next()
    assert x.shape == (6, 3, 8, 8)
    padded = F.pad(imgs.float() / 255, (pad, pad, pad, pad))
    for i in range(6):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if torch.equal(x[i], padded[i, :, dy : dy + 8, dx : dx + 8])]
        assert len(hits) == 1


def test_flip_actually_flips():
    imgs = _images(32)
    x, _ = _loader(imgs, bs=32, shuffle=False, augment=Augment(flip=True), mean=0.0, std=1.0).next()
    plain = imgs.float() / 255
    flipped = [torch.equal(x[i], plain[i].flip(2)) for i in range(32)]
    kept = [torch.equal(x[i], plain[i]) for i in range(32)]
    assert all(f != k for f, k in zip(flipped, kept))  # each sample is exactly one of the two
    assert 0 < sum(flipped) < 32


def test_cutout_zeroes_a_square():
    size = 4
    x, _ = _loader(_images(64, h=12, w=12), bs=64, augment=Augment(cutout=size), mean=0.0, std=1.0).next()
    zero = x == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # same square in every channel
    sides = []
    for z in zero[:, 0]:
        rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
        assert len(rows) and len(cols)
        assert rows.tolist() == list(range(rows[0], rows[-1] + 1))  # contiguous
        assert int(z.sum()) == len(rows) * len(cols)  # a rectangle (a square clipped at borders)
        sides += [len(rows), len(cols)]
    assert max(sides) == size and min(sides) >= size // 2


def test_rank_shards_are_disjoint_and_equal():
    world, labels_seen = 3, []
    for rank in range(world):
        loader = _loader(_images(20), bs=2, seed=5, rank=rank, world_size=world)
        assert loader.steps_per_epoch == 3  # 20 // 3 = 6 samples per rank
        labels_seen.append(torch.cat([y for _, y in loader]).tolist())
    flat = sum(labels_seen, [])
    assert len(flat) == 18 and len(set(flat)) == 18
    with pytest.raises(DataError, match="rank"):
        _loader(_images(20), rank=3, world_size=3)


def test_a_state_saved_by_two_ranks_is_resharded_for_one_at_the_same_global_batch():
    """2 ranks x 2 images read 3 steps; one process with batch 4 continues with exactly the
    samples of the epoch not read yet, then the same next epoch permutation on both."""
    imgs = _images(20)
    ranks = [_loader(imgs, bs=2, seed=5, rank=r, world_size=2) for r in range(2)]
    seen = [int(v) for _ in range(3) for ld in ranks for v in ld.next()[1]]
    one = _loader(imgs, bs=4, seed=5)
    one.load_state_dict(ranks[0].state_dict())
    rest = []
    while one.position < one.steps_per_epoch:
        rest += one.next()[1].tolist()
    assert not set(seen) & set(rest) and len(seen) == 12 and len(set(seen + rest)) == 20
    assert one.epoch == ranks[0].epoch == 0
    # the reverse: one process (batch 4) handing over to 2 ranks (2 each) mid-epoch
    one = _loader(imgs, bs=4, seed=5)
    first = one.next()[1].tolist()
    halves = [_loader(imgs, bs=2, seed=5, rank=r, world_size=2) for r in range(2)]
    for ld in halves:
        ld.load_state_dict(one.state_dict())
    nxt = [v for ld in halves for v in ld.next()[1].tolist()]
    assert not set(first) & set(nxt) and len(set(nxt)) == 4
    # another global batch cannot take over: a one-line error that says what to keep
    with pytest.raises(DataError, match="global batch"):
        _loader(imgs, bs=2, seed=5).load_state_dict(ranks[0].state_dict())


# moved from the issue-8 grab-bag (what a new user hits: nothing on disk lost, nothing misread)

def test_partial_cifar_warning_is_one_clean_line(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 48), ("test_batch", 8)):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": [int(v) for v in rng.integers(0, 10, n)]}, f, protocol=2)
    code, _, err = run_cli(["search", "--data", f"cifar10:{folder}", "--out", tmp_path / "r", *CLI_TINY], capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if "batch" in line]
    assert lines and all(line.startswith("warning: ") and ".py:" not in line for line in lines), err


# moved from the issue-12 grab-bag (crash safety, bad input, TensorBoard)

def _cifar_folder(root: Path) -> Path:
    import pickle

    import numpy as np
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "test_batch"):
        batch = {b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder


def test_truncated_cifar_batch_file_is_named(tmp_path, capsys):
    folder = _cifar_folder(tmp_path)
    data = (folder / "data_batch_1").read_bytes()
    (folder / "data_batch_1").write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(["search", "--data", f"cifar10:{folder}", "--out", tmp_path / "r", *CLI_TINY_CPU1], capsys)
    assert code == 2 and "data_batch_1" in one_line_error(err) and not (tmp_path / "r").exists()


def test_truncated_cifar_archive_is_named(tmp_path, capsys):
    import tarfile
    folder = _cifar_folder(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(["search", "--data", f"cifar10:{archive}", "--out", tmp_path / "r", *CLI_TINY_CPU1], capsys)
    assert code == 2 and "cifar-10-python.tar.gz" in one_line_error(err) and not (tmp_path / "r").exists()
