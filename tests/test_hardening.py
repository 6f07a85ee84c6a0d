"""Crash safety, bad input and TensorBoard (issue 12, parts 2-4): runs that really get killed,
disks that fill up, losses that go NaN, files that are not what they claim, and the event files."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pcdarts import runs
from pcdarts.cli import main
from pcdarts.errors import CheckpointWriteError
from pcdarts.registry import OBJECTIVES

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--space.C", "4", "--space.layers", "3", "--data.max_samples", "48", "--search.epochs", "2",
        "--search.batch_size", "8", "--method.warmup_epochs", "1", "--method.k", "2", "--no-progress",
        "--run.plots", "false", "--run.threads", "1", "--run.device", "cpu"]
TRAIN_TINY = ["--no-progress", "--train.epochs", "1", "--model.C", "4", "--model.layers", "3",
              "--train.batch_size", "16", "--data.max_samples", "32", "--data.max_test_samples", "16",
              "--run.threads", "1", "--run.device", "cpu"]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 2. crash safety: SIGKILL

KILL_ARGS = [*TINY, "--search.batch_size", "4", "--search.checkpoint_every", "1", "--run.deterministic", "true"]


def _search_process(args: list[str], pause: str = "") -> subprocess.Popen:
    env = {**os.environ, "PCDARTS_TEST_CHECKPOINT_PAUSE": pause, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pcdarts", "search", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _final_state(run: Path) -> tuple[dict, dict, str]:
    ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    return ck["supernet"], ck["method"], (run / "genotype.json").read_text()


def _assert_equal_state(a, b) -> None:
    def flat(x, prefix=""):
        if isinstance(x, dict):
            for k, v in x.items():
                yield from flat(v, f"{prefix}{k}.")
        elif torch.is_tensor(x):
            yield prefix, x
    fa, fb = dict(flat(a)), dict(flat(b))
    assert fa.keys() == fb.keys()
    for k in fa:
        assert torch.equal(fa[k], fb[k]), k


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """Killed (SIGKILL) again and again at random steps and inside checkpoint writes (the test
    hook sleeps between the write's stages), each time resumed: the end is bit-identical."""
    ref = tmp_path / "ref"
    try:  # the uninterrupted run, in this process (same kernels: CPU, one thread, deterministic)
        assert main(["search", "--out", str(ref), *KILL_ARGS]) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    run, rng, kills = tmp_path / "run", random.Random(12), 0
    args = ["--out", str(run), *KILL_ARGS]
    for attempt in range(12):
        p = _search_process(args, pause="0.03")
        deadline = time.time() + 60
        while not (run / "checkpoint.pt").is_file() and p.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        if p.poll() is None and kills < 3:
            time.sleep(rng.uniform(0.0, 0.6))
            p.send_signal(signal.SIGKILL)
        rc = p.wait(timeout=120)
        if rc == 0:
            break
        assert rc == -signal.SIGKILL, p.stderr.read().decode()
        kills += 1
        runs.load_checkpoint(run / "checkpoint.pt", "search", "test")  # always a complete checkpoint
        args = ["--resume", str(run)]
    assert rc == 0 and kills >= 3
    _assert_equal_state(_final_state(ref)[:2], _final_state(run)[:2])
    assert _final_state(ref)[2] == _final_state(run)[2]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    hist = [strip(json.loads(ln) for ln in (r / "history.jsonl").read_text().splitlines()) for r in (ref, run)]
    assert hist[0] == hist[1]


# ---------------------------------------------------------------- 2. crash safety: disk full

def _enospc(obj, f, *args, **kwargs):
    f.write(b"half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    runs.save_checkpoint({"format": "pcdarts-search", "epoch": 1}, path)
    runs.save_checkpoint({"format": "pcdarts-search", "epoch": 2}, path)
    before = digest(tmp_path)
    monkeypatch.setattr(torch, "save", _enospc)
    with pytest.raises(CheckpointWriteError) as e:
        runs.save_checkpoint({"format": "pcdarts-search", "epoch": 3}, path)
    msg = str(e.value)
    assert "\n" not in msg and "disk is full" in msg and str(path) in msg and "is intact" in msg
    assert digest(tmp_path) == before  # no partial file left, neither checkpoint touched
    assert runs.load_checkpoint(path, "search", "t")["epoch"] == 2


@pytest.mark.slow
def test_disk_full_during_a_search_is_one_line_and_resumable(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    real, calls = torch.save, []

    def fails_third(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            return _enospc(obj, f)
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fails_third)
    code, _, err = run_cli(["search", "--out", out, *TINY, "--search.checkpoint_every", "1"], capsys)
    line = one_line_error(err)
    assert code == 2 and "disk is full" in line and str(out / "checkpoint.pt") in line and "--resume" in line
    ck = runs.load_checkpoint(out / "checkpoint.pt", "search", "t")
    assert (ck["epoch"], ck["step"]) == (0, 2)
    monkeypatch.setattr(torch, "save", real)
    code, _, err = run_cli(["search", "--resume", out], capsys)
    assert code == 0, err


def test_write_error_without_a_previous_checkpoint_says_so(tmp_path, monkeypatch):
    def eio(obj, f, *a, **k):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(torch, "save", eio)
    with pytest.raises(CheckpointWriteError, match=r"write failed \(Input/output error\).*no checkpoint"):
        runs.save_checkpoint({}, tmp_path / "checkpoint.pt")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 2. rollback after a non-finite loss

def _nan_at(monkeypatch, calls: set[int]):
    """The objective's loss is NaN at the given (1-based) calls, so its gradients poison the weights."""
    cls = OBJECTIVES.get("cross-entropy")
    real, n = cls.forward, [0]

    def forward(self, *args, **kwargs):
        loss, metrics = real(self, *args, **kwargs)
        n[0] += 1
        return (loss * float("nan"), metrics) if n[0] in calls else (loss, metrics)
    monkeypatch.setattr(cls, "forward", forward)


@pytest.mark.slow
def test_rollback_recovers_from_a_nan_with_halved_learning_rates(tmp_path, capsys, monkeypatch):
    _nan_at(monkeypatch, {9})  # epoch 2 (arch active): weight and arch steps both call the objective
    out = tmp_path / "r"
    code, stdout, err = run_cli(["search", "--out", out, *TINY, "--search.checkpoint_every", "2",
                                 "--search.rollback", "1", "--search.lr_min", "0.0"], capsys)
    assert code == 0, err
    line = [ln for ln in stdout.splitlines() if ln.startswith("rollback")]
    assert len(line) == 1 and "rollback 1/1" in line[0] and "halved" in line[0], stdout
    ck = runs.load_checkpoint(out / "checkpoint.pt", "search", "t")
    assert ck["rollbacks"] == 1 and ck["scheduler"]["base_lrs"] == [pytest.approx(0.05)]  # quick preset lr 0.1
    assert ck["method"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05)  # arch lr 0.1 halved
    hist = [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in hist] == [0, 1] and (out / "genotype.json").is_file()


def test_rollbacks_are_counted_then_the_error_stands(tmp_path, capsys, monkeypatch):
    _nan_at(monkeypatch, {9, 11})  # the second NaN in the replayed step
    out = tmp_path / "r"
    code, _, err = run_cli(["search", "--out", out, *TINY, "--search.checkpoint_every", "2",
                            "--search.rollback", "1"], capsys)
    assert code == 2 and "became non-finite" in one_line_error(err) and not (out / "genotype.json").exists()


# ---------------------------------------------------------------- 3. --debug

def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    args = ["search", "--out", tmp_path / "r", *TINY, "--search.epochs", "-1"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "search.epochs" in one_line_error(err)
    from pcdarts.errors import ConfigError
    for extra in (["--debug"], ):
        with pytest.raises(ConfigError):
            main([str(a) for a in [*args, *extra]])
    with pytest.raises(ConfigError):
        main(["--debug", *[str(a) for a in args]])


# ---------------------------------------------------------------- 3. bad input: one line, nothing written

@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", "--out", str(out), *TINY, "--search.epochs", "1", "--method.warmup_epochs", "0"]) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_checkpoint_of_another_space_or_method_is_named(search_run, tmp_path, capsys):
    x = _copy(search_run, tmp_path / "x")
    ck = torch.load(x / "checkpoint.pt", weights_only=True)
    ck["config"]["space"]["C"] = 8  # a checkpoint of a wider supernet copied in
    torch.save(ck, x / "checkpoint.pt")
    before = digest(x)
    code, _, err = run_cli(["search", "--resume", x], capsys)
    line = one_line_error(err)
    assert code == 2 and "belongs to another run" in line and "space.C 8 vs 4" in line and "config.yaml" in line
    assert digest(x) == before


def test_checkpoint_from_a_newer_version_is_named(search_run, tmp_path, capsys):
    x = _copy(search_run, tmp_path / "x")
    ck = torch.load(x / "checkpoint.pt", weights_only=True)
    ck["version"] = 99
    torch.save(ck, x / "checkpoint.pt")
    before = digest(x)
    for cmd in (["search", "--resume", x], ["derive", x]):
        code, _, err = run_cli(cmd, capsys)
        assert code == 2 and "newer pcdarts" in one_line_error(err) and "version 99" in err
    assert digest(x) == before


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
    code, _, err = run_cli(["search", "--data", f"cifar10:{folder}", "--out", tmp_path / "r", *TINY], capsys)
    assert code == 2 and "data_batch_1" in one_line_error(err) and not (tmp_path / "r").exists()


def test_truncated_cifar_archive_is_named(tmp_path, capsys):
    import tarfile
    folder = _cifar_folder(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(["search", "--data", f"cifar10:{archive}", "--out", tmp_path / "r", *TINY], capsys)
    assert code == 2 and "cifar-10-python.tar.gz" in one_line_error(err) and not (tmp_path / "r").exists()


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
    code, _, err = run_cli(["search", "--data", f"folder:{root}", "--out", tmp_path / "r", *TINY], capsys)
    line = one_line_error(err)
    assert code == 2 and named in line and not (tmp_path / "r").exists(), line


def test_bad_images_skip_leaves_them_out_with_a_count_and_mixed_sizes_are_resized(tmp_path, capsys):
    from PIL import Image
    root = _image_folder(tmp_path / "imgs", n=12)
    (root / "a" / "bad.png").write_text("not an image")
    Image.new("L", (20, 16), 128).save(root / "b" / "grey_and_larger.png")  # another size and mode
    code, out, err = run_cli(["search", "--data", f"folder:{root}", "--data.bad_images", "skip",
                              "--out", tmp_path / "r", *TINY], capsys)
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
    code, _, err = run_cli(["search", "--data", f"folder:{root}", "--out", tmp_path / "f", *TINY], capsys)
    assert code == 2 and "bad.png" in one_line_error(err)
    code, _, err = run_cli(["search", "--data.bad_images", "skip", "--out", tmp_path / "g", *TINY], capsys)
    assert code == 2 and "data.bad_images" in one_line_error(err) and "image folders" in err


def _genotype_json(first_op: str, first_input: int) -> str:
    normal = [[first_op, first_input]] + [["sep_conv_3x3", i % 2] for i in range(1, 8)]
    reduce = [["max_pool_3x3", i % 2] for i in range(8)]
    return json.dumps({"normal": normal, "normal_concat": [2, 3, 4, 5], "reduce": reduce,
                       "reduce_concat": [2, 3, 4, 5]})


@pytest.mark.parametrize("text,named", [
    (_genotype_json("conv_9x9", 0), "conv_9x9"),    # an unknown op
    (_genotype_json("sep_conv_3x3", 7), "7"),       # node 2 cannot read node 7
], ids=["unknown-op", "bad-node"])
def test_bad_genotype_files_are_named(tmp_path, capsys, text, named):
    g = tmp_path / "genotype.json"
    g.write_text(text)
    code, _, err = run_cli(["train", g, "--out", tmp_path / "t", *TRAIN_TINY], capsys)
    line = one_line_error(err)
    assert code == 2 and named in line and not (tmp_path / "t").exists(), line


@pytest.mark.parametrize("body,named", [
    ("search: {epochs: 2, bogus: 1}\n", "search.bogus"),
    ("space: {C: -4}\n", "space.C"),
    ("search: {batch_size: 0}\n", "search.batch_size"),
    ("search: {epochs: two}\n", "search.epochs"),
    ("search: [1, 2]\n", "preset.yaml"),
])
def test_bad_preset_files_are_named(tmp_path, capsys, body, named):
    p = tmp_path / "preset.yaml"
    p.write_text(body)
    code, _, err = run_cli(["search", "--preset", p, "--out", tmp_path / "r"], capsys)
    assert code == 2 and named in one_line_error(err) and not (tmp_path / "r").exists(), err


# ---------------------------------------------------------------- 4. TensorBoard

def _tags(log_dir: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    ea.Reload()
    return ea.Tags()


def test_tensorboard_search_writes_scalars_histograms_and_the_cell(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "r"
    code, _, err = run_cli(["search", "--out", out, *TINY, "--tensorboard"], capsys)
    assert code == 0, err
    tags = _tags(out / "tb")
    assert {"train_loss", "train_acc", "arch_loss", "arch_acc", "valid_acc", "lr", "param_free_ops",
            "arch_entropy/normal", "arch_entropy/reduce"} <= set(tags["scalars"])
    assert "arch_weights/normal/edge0" in tags["histograms"] and "arch_weights/reduce/edge13" in tags["histograms"]
    assert {"cell/normal", "cell/reduce"} <= set(tags["images"])


@pytest.mark.slow
def test_tensorboard_training_writes_scalars(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "t"
    code, _, err = run_cli(["train", "DARTS_V2", "--preset", "short", "--out", out, *TRAIN_TINY, "--tensorboard"],
                           capsys)
    assert code == 0, err
    assert {"train_loss", "train_acc", "lr", "test_top1", "drop_path_prob"} <= set(_tags(out / "tb")["scalars"])


@pytest.mark.parametrize("command", ["search", "train"])
def test_tensorboard_missing_is_one_line(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    args = ["search", *TINY] if command == "search" else ["train", "DARTS_V2", *TRAIN_TINY]
    code, _, err = run_cli([*args, "--out", tmp_path / "r", "--tensorboard"], capsys)
    line = one_line_error(err)
    assert code == 2 and 'pip install "pcdarts[tensorboard]"' in line and not (tmp_path / "r").exists()


@pytest.mark.parametrize("args,named", [
    (["--space.layers", "2"], "space.layers=2 builds a DARTS supernet without a normal cell"),
    (["--space.layers", "3", "--data.max_samples", "40"], "search.batch_size=64 is larger than the 20 images"),
    (["--space.layers", "3", "--data.max_samples", "200", "--search.arch_batch_size", "128"],
     "search.arch_batch_size=128 is larger than the 100 images"),
])
def test_a_supernet_or_batch_that_cannot_train_is_refused_before_the_run_directory(tmp_path, capsys, args, named):
    """Too few cells for a normal cell (its weights got no gradient: a traceback before), or a
    batch larger than its split (the loader's internal message before): one line, no folder."""
    code = main(["search", "--space.C", "4", "--search.epochs", "1", "--method.warmup_epochs", "0",
                 "--no-progress", "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2 and named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()
