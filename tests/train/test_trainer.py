"""Tests for pcdarts.train.trainer: the from-scratch Trainer, presets, resume, seeds, eval and the CLI.

Every run is tiny (C=4, 3 cells, a few dozen images) so the file stays well under a minute on 2 CPU cores.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pcdarts.cli import main
from pcdarts.genotype import load_genotype
from pcdarts.train.model import evaluate
from pcdarts.train.seeds import train_seeds
from pcdarts.train.trainer import CHECKPOINT, Trainer, train
from pcdarts.train.config import build_train_config, load_train_preset, lr_at, train_preset_names

SHARED_CIFAR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar-10-batches-py"

# CLI flags that shrink the short preset to a test-sized run
TINY_ARGS = ["--no-progress", "--train.epochs", "2", "--model.C", "4", "--model.layers", "3",
             "--train.batch_size", "16", "--data.max_samples", "48", "--data.max_test_samples", "32"]


def tiny(tmp_path: Path, name: str = "run", **sections: dict) -> dict:
    """A nested config dict for a test-sized run on digits."""
    d = {
        "data": {"dataset": "digits", "max_samples": 48, "max_test_samples": 32},
        "model": {"C": 4, "layers": 3, "drop_path_prob": 0.2, "nb201_C": 4, "nb201_N": 1},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.05},
        "run": {"seed": 0, "out": str(tmp_path / name), "progress": False, "device": "cpu"},
    }
    for key, values in sections.items():
        d.setdefault(key, {}).update(values)
    return d


def read_history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- end to end through the CLI

def test_cli_train_short_preset_on_digits(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "DARTS_V2", "--preset", "short", "--out", str(out), *TINY_ARGS]) == 0
    for name in ("config.yaml", "manifest.json", "genotype.json", "history.jsonl", CHECKPOINT, "metrics.json"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    # the network takes its shape from the data: digits are 1 x 16 x 16 with 10 classes
    assert (m["in_channels"], m["input_size"], m["num_classes"]) == (1, 16, 10)
    assert 0 <= m["final_test_top1"] <= 100 and m["final_test_top5"] >= m["final_test_top1"]
    assert m["params_m"] > 0 and m["macs_m"] > 0 and m["epochs"] == 2 and m["seed"] == 0
    assert len(read_history(out)) == 2
    ck = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
    assert ck["epoch"] == 2 and {"model", "optimizer", "loader", "rng", "config"} <= set(ck)


@pytest.mark.data
def test_cli_train_on_shared_cifar10_batch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if not (SHARED_CIFAR / "data_batch_1").is_file():
        pytest.skip(f"shared CIFAR-10 batch not found at {SHARED_CIFAR}")
    out = tmp_path / "cifar"
    rc = main(["train", "DARTS_V2", "--data", f"cifar10:{SHARED_CIFAR}", "--out", str(out),
               "--train.cutout", "16", *TINY_ARGS])
    assert rc == 0
    # only data_batch_1 of 5 is shared: one clean warning line
    assert "warning: cifar10: found 1 of 5 train batches" in capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert (m["in_channels"], m["input_size"], m["num_classes"]) == (3, 32, 10)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["augment"] == {"crop_padding": 4, "flip": True, "cutout": 16}


def test_nb201_genotype_trains(tmp_path: Path) -> None:
    res = train("NB201_best_cifar10", tiny(tmp_path))
    assert not res.interrupted and res.metrics["final_test_top1"] is not None
    ck = torch.load(res.run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    assert any(k.startswith("cells.") for k in ck["model"])
    assert res.metrics["genotype"].startswith("|nor_conv_3x3~0|")


# ---------------------------------------------------------------- exact resume

@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_equals_uninterrupted(tmp_path: Path, grad_accum: int) -> None:
    # augmentation, cutout and drop-path all draw random numbers: resume must restore every stream
    sections = dict(data={"crop_padding": 2, "flip": True}, train={"cutout": 4, "grad_accum": grad_accum})
    full = train("DARTS_V2", tiny(tmp_path, "full", **sections))
    part = train("DARTS_V2", tiny(tmp_path, "part", **sections), stop_after_steps=2)
    assert part.interrupted and not (part.run_dir / "metrics.json").exists()
    ck = torch.load(part.run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (0, 2)  # stopped mid-epoch, at an optimiser-step boundary
    resumed = train(resume=part.run_dir)
    a = torch.load(full.run_dir / CHECKPOINT, map_location="cpu", weights_only=True)["model"]
    b = torch.load(resumed.run_dir / CHECKPOINT, map_location="cpu", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for key in ("final_test_top1", "final_test_loss", "best_test_top1"):
        assert full.metrics[key] == resumed.metrics[key]
    strip = [{k: v for k, v in r.items() if k != "train_time_s"} for r in read_history(full.run_dir)]
    assert strip == [{k: v for k, v in r.items() if k != "train_time_s"} for r in read_history(resumed.run_dir)]


def test_resume_from_cli_and_finished_run(tmp_path: Path) -> None:
    part = train("DARTS_V2", tiny(tmp_path), stop_after_steps=3)  # epoch 1 ends after 3 steps of 16
    assert part.interrupted
    assert main(["train", "--resume", str(part.run_dir), "--no-progress"]) == 0
    assert json.loads((part.run_dir / "metrics.json").read_text())["epochs"] == 2
    assert main(["train", "--resume", str(part.run_dir), "--no-progress"]) == 0  # finished: just reports


def test_ctrl_c_stops_at_a_step_boundary_and_checkpoints(tmp_path: Path) -> None:
    import signal
    tr = _trainer(tmp_path)
    calls = []

    def hook(*_: object) -> None:  # Ctrl-C while the second micro-batch is being computed
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)

    tr.net.stem.register_forward_hook(hook)
    res = tr.run()
    assert res.interrupted and len(calls) == 2
    ck = torch.load(tmp_path / "run" / CHECKPOINT, map_location="cpu", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (0, 2)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


# ---------------------------------------------------------------- loss terms and schedules

def _trainer(tmp_path: Path, **sections: dict) -> Trainer:
    cfg = build_train_config(tiny(tmp_path, **sections))
    (tmp_path / "run").mkdir(exist_ok=True)
    return Trainer(load_genotype("DARTS_V2"), cfg, tmp_path / "run")


def test_aux_loss_only_in_training(tmp_path: Path) -> None:
    tr = _trainer(tmp_path)
    x, y = tr.data.train.next()
    tr.net.train()
    logits, aux = tr.net(x)
    assert aux is not None
    expected = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
    assert torch.allclose(tr.loss(logits, aux, y), expected)
    calls = []
    tr.net.auxiliary_head.register_forward_hook(lambda *a: calls.append(1))
    res = evaluate(tr.net, tr.data.test, tr.device)
    assert calls == [] and tr.net.training  # eval mode inside, train mode restored
    tr.net.eval()
    with torch.no_grad():
        xs, ys = zip(*list(tr.data.test))
        out, aux_eval = tr.net(torch.cat(xs))
    assert aux_eval is None
    assert res["test_loss"] == pytest.approx(F.cross_entropy(out, torch.cat(ys)).item(), rel=1e-5)


def test_label_smoothing_is_used_for_training_loss(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, model={"auxiliary": False}, train={"label_smoothing": 0.1})
    assert tr.criterion.label_smoothing == 0.1
    x, y = tr.data.train.next()
    logits, aux = tr.net(x)
    assert aux is None
    assert torch.allclose(tr.loss(logits, aux, y), F.cross_entropy(logits, y, label_smoothing=0.1))
    assert not torch.allclose(tr.loss(logits, aux, y), F.cross_entropy(logits, y))


def test_drop_path_and_lr_follow_the_epoch(tmp_path: Path) -> None:
    res = train("DARTS_V2", tiny(tmp_path, train={"epochs": 4, "eval_every": 2}, data={"max_samples": 16}))
    hist = read_history(res.run_dir)
    assert [r["drop_path_prob"] for r in hist] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    cfg = build_train_config(tiny(tmp_path, train={"epochs": 4}))
    assert [r["lr"] for r in hist] == pytest.approx([lr_at(cfg.train, e) for e in range(4)])
    assert ["test_top1" in r for r in hist] == [False, True, False, True]


def test_lr_schedules() -> None:
    def t(**kw):
        return build_train_config({"train": {"epochs": 10, "lr": 0.1, **kw}}).train
    assert lr_at(t(), 0) == pytest.approx(0.1) and lr_at(t(), 5) == pytest.approx(0.05)
    assert lr_at(t(lr_min=0.01), 10) == pytest.approx(0.01)
    assert lr_at(t(lr_schedule="exponential", lr_gamma=0.97), 3) == pytest.approx(0.1 * 0.97 ** 3)
    assert lr_at(t(lr_schedule="linear"), 5) == pytest.approx(0.05)
    warm = t(lr_schedule="linear", warmup_epochs=5)
    assert lr_at(warm, 0) == pytest.approx(0.1 * 1.0 * 1 / 5) and lr_at(warm, 4) == pytest.approx(0.06)
    assert math.isclose(lr_at(warm, 5), 0.05)


def test_grad_accum_steps_once_per_group(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, train={"grad_accum": 2, "epochs": 1}, data={"max_samples": 40})
    assert tr.micro_batch == 8 and tr.steps == 5  # 40 images: 8+8 | 8+8 | 8
    steps = []
    original = tr.optimizer.step
    tr.optimizer.step = lambda *a, **k: (steps.append(tr.step), original(*a, **k))[1]
    tr.run()
    assert steps == [1, 3, 4]
    assert sum(tr._micro_weight(s, 8) for s in (0, 1)) == pytest.approx(1.0)
    assert tr._micro_weight(4, 8) == pytest.approx(1.0)


# ---------------------------------------------------------------- seeds and eval

def test_seeds_summary_is_labelled_training_variance(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "seeds"
    assert main(["train", "DARTS_V2", "--seeds", "0,1", "--out", str(out), *TINY_ARGS]) == 0
    text = capsys.readouterr().out
    assert "mean ± std over 2 training seeds" in text
    assert "training-seed variance of one cell, not search variance" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_seeds"] == 2 and summary["seeds"] == [0, 1]
    assert summary["variance"] == "training-seed variance of one cell, not search variance"
    values = summary["final_test_top1"]["values"]
    assert len(values) == 2 and summary["final_test_top1"]["mean"] == pytest.approx(sum(values) / 2)
    for s in (0, 1):
        m = json.loads((out / f"seed-{s}" / "metrics.json").read_text())
        assert m["seed"] == s


def test_train_seeds_api_resume(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, "seeds", train={"epochs": 1})
    part = train_seeds("DARTS_V2", cfg, [3, 4], stop_after_steps=2)
    assert part.interrupted
    assert main(["train", "--resume", str(tmp_path / "seeds"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "seeds" / "summary.json").read_text())["seeds"] == [3, 4]


def test_eval_command_prints_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    res = train("DARTS_V2", tiny(tmp_path))
    capsys.readouterr()
    assert main(["eval", str(res.run_dir)]) == 0
    text = capsys.readouterr().out
    assert f"top-1 {res.metrics['final_test_top1']:.2f}%" in text and "top-5" in text and "loss" in text
    assert main(["eval", str(res.run_dir / CHECKPOINT), "--data", "digits", "--split", "train",
                 "--batch-size", "64"]) == 0
    text = capsys.readouterr().out
    from pcdarts.data.sources import load_dataset
    assert f"train split, {len(load_dataset('digits', 'train'))} images" in text  # --data: the whole split


# ---------------------------------------------------------------- user errors (exit code 2)

@pytest.mark.parametrize("args, message", [
    (["train", "DARTS_V2", "--preset", "no_such_preset"], "unknown training preset"),
    (["train", "NOT_A_CELL"], "not a genotype file"),
    (["train", "DARTS_V2", "--train.epochz", "2"], "unknown key 'train.epochz'"),
    (["train", "DARTS_V2", "--optim.lr", "2"], "unknown override"),
    (["train", "DARTS_V2", "--train.epochs", "two"], "train.epochs must be of type int"),
    (["train", "DARTS_V2", "--train.grad_accum", "5"], "train.grad_accum=5"),
    (["train", "DARTS_V2", "--seeds", "0,x"], "--seeds"),
    (["train", "DARTS_V2", "--preset", "imagenet_mobile"], "data.path"),
    (["eval", "/no/such/run"], "no training checkpoint"),
])
def test_user_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, args: list, message: str) -> None:
    assert main([*args, "--out", str(tmp_path / "x")] if args[0] == "train" else args) == 2
    assert message in capsys.readouterr().err


def test_existing_out_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["train", "DARTS_V2", "--out", str(out), *TINY_ARGS]) == 0
    capsys.readouterr()
    assert main(["train", "DARTS_V2", "--out", str(out), *TINY_ARGS]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "DARTS_V2", "--out", str(out), "--overwrite", *TINY_ARGS]) == 0


def test_presets_load() -> None:
    assert {"short", "cifar10_paper", "imagenet_mobile"} <= set(train_preset_names())
    paper = build_train_config(load_train_preset("cifar10_paper"))
    assert (paper.train.epochs, paper.train.batch_size, paper.train.lr, paper.train.cutout) == (600, 96, 0.025, 16)
    assert (paper.model.C, paper.model.layers, paper.model.drop_path_prob) == (36, 20, 0.2)
    mobile = build_train_config(load_train_preset("imagenet_mobile"))
    assert (mobile.model.stem, mobile.data.input_size, mobile.train.lr_gamma) == ("imagenet", 224, 0.97)
    assert (mobile.train.label_smoothing, mobile.model.drop_path_prob) == (0.1, 0.0)


# ---------------------------------------------------------------- custom image folders

def _make_grey_folder(root: Path, per_class: int = 8, split: bool = False) -> None:
    """3 classes of 20x20 grey images: dark, mid and bright with a little noise."""
    g = torch.Generator().manual_seed(0)
    parts = {"train": per_class, "val": 3} if split else {"": per_class}
    for part, n in parts.items():
        for c, level in enumerate((40, 128, 215)):
            folder = root / part / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = (level + torch.randint(-20, 21, (20, 20), generator=g)).clamp(0, 255).to(torch.uint8)
                Image.fromarray(px.numpy(), mode="L").save(folder / f"{i}.png")


@pytest.mark.parametrize("split, loader", [(False, "memory"), (True, "memory"), (True, "stream")])
def test_folder_dataset_one_config_block(tmp_path: Path, split: bool, loader: str) -> None:
    _make_grey_folder(tmp_path / "imgs", split=split)
    data = {"dataset": "folder", "path": str(tmp_path / "imgs"), "input_size": 20, "channels": 1,
            "loader": loader, "workers": 0, "max_samples": None, "max_test_samples": None}
    res = train("DARTS_V2", tiny(tmp_path, data=data, train={"batch_size": 8}))
    m = res.metrics
    assert (m["in_channels"], m["input_size"], m["num_classes"]) == (1, 20, 3)
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    expected = (24, 9) if split else (22, 2)  # split folders, or a seeded 90/10 hold-out of 24 images
    assert (manifest["data"]["n_train"], manifest["data"]["n_test"]) == expected
    assert manifest["data"]["loader"] == loader


def test_folder_stream_resume_is_exact(tmp_path: Path) -> None:
    _make_grey_folder(tmp_path / "imgs", split=True)
    data = {"dataset": "folder", "path": str(tmp_path / "imgs"), "input_size": 16, "channels": 1,
            "loader": "stream", "workers": 0, "max_samples": None, "max_test_samples": None}
    full = train("DARTS_V2", tiny(tmp_path, "full", data=data, train={"batch_size": 8}))
    part = train("DARTS_V2", tiny(tmp_path, "part", data=data, train={"batch_size": 8}), stop_after_steps=2)
    resumed = train(resume=part.run_dir)
    a = torch.load(full.run_dir / CHECKPOINT, map_location="cpu", weights_only=True)["model"]
    b = torch.load(resumed.run_dir / CHECKPOINT, map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_folder_gives_clear_error(tmp_path: Path) -> None:
    from pcdarts.errors import PcdartsError  # one folder-layout rule (and error) for search and training
    with pytest.raises(PcdartsError, match="data.path .*missing.* is not a folder"):
        train("DARTS_V2", tiny(tmp_path, data={"dataset": "folder", "path": str(tmp_path / "missing")}))
