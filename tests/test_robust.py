"""What a new user hits: nothing on disk lost, nothing misread (issue 8), one test per item."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pcdarts.cli import main, split_overrides
from pcdarts.search.config import SECTIONS, build_config, load_config_file
from pcdarts.errors import ConfigError
from pcdarts.ranges import check_ranges, field_range, range_hints
from pcdarts.registry import METHODS
from pcdarts.search.searcher import search
from pcdarts.train.config import SECTIONS as TRAIN_SECTIONS, build_train_config

search_mod = importlib.import_module("pcdarts.search.searcher")  # the package exports a function of that name

TINY = ["--space.C", "4", "--space.layers", "3", "--data.max_samples", "48", "--search.epochs", "2",
        "--search.batch_size", "8", "--method.warmup_epochs", "1", "--method.k", "2", "--no-progress",
        "--run.plots", "false"]
TRAIN_TINY = ["--no-progress", "--train.epochs", "2", "--model.C", "4", "--model.layers", "3",
              "--train.batch_size", "16", "--data.max_samples", "48", "--data.max_test_samples", "32"]
RUN_FILES = ("config.yaml", "manifest.json", "history.jsonl", "genotype.json", "checkpoint.pt")


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    """A finished tiny search run (2 epochs), copied by the tests that change it."""
    out = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(["train", "DARTS_V2", "--preset", "short", "--out", str(out), *TRAIN_TINY]) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- 1. --overwrite loses nothing

@pytest.mark.parametrize("bad", [["--data", "cifar10:/nonexistent"], ["--space.C", "0"]])
def test_overwrite_keeps_the_old_search_run_when_the_new_one_is_invalid(search_run, tmp_path, capsys, bad):
    x = copy_run(search_run, tmp_path / "X")
    before = digest(x)
    code, _, err = run_cli(["search", "--out", x, "--overwrite", *TINY, *bad], capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err
    assert digest(x) == before and not list(x.glob(".replaced-*"))


def test_overwrite_restores_the_old_run_when_the_new_one_fails_before_its_first_checkpoint(
        search_run, tmp_path, capsys):
    x = copy_run(search_run, tmp_path / "X")
    before = digest(x)
    code, _, err = run_cli(["search", "--out", x, "--overwrite", *TINY, "--search.lr", "1e30"], capsys)
    assert code == 2 and "non-finite" in err
    assert digest(x) == before and not list(x.glob(".replaced-*"))


def test_overwrite_replaces_the_old_run_once_the_new_one_checkpoints(search_run, tmp_path, capsys):
    x = copy_run(search_run, tmp_path / "X")
    (x / "genotype_normal.png").write_bytes(b"stale picture")
    code, _, err = run_cli(["search", "--out", x, "--overwrite", *TINY, "--seed", "5"], capsys)
    assert code == 0, err
    assert yaml.safe_load((x / "config.yaml").read_text())["run"]["seed"] == 5
    assert not (x / "genotype_normal.png").exists() and not list(x.glob(".replaced-*"))


def test_overwrite_keeps_the_old_training_run_when_the_new_one_is_invalid(train_run, tmp_path, capsys):
    x = copy_run(train_run, tmp_path / "X")
    before = digest(x)
    code, _, err = run_cli(["train", "DARTS_V2", "--out", x, "--overwrite", *TRAIN_TINY,
                            "--data", "cifar10:/nonexistent"], capsys)
    assert code == 2 and "/nonexistent" in err
    assert digest(x) == before


# ---------------------------------------------------------------- 2. scientific notation

@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("3e-4", 3e-4), ("1.0e6", 1e6), (".5", 0.5),
                                        ("3E-4", 3e-4), ("+1e-2", 1e-2)])
def test_floats_accept_scientific_notation_everywhere(tmp_path, text, value):
    from pcdarts.cli import search_config_dict
    from pcdarts.cli import build_parser
    args = build_parser().parse_args(["search"])
    d = search_config_dict(args, ["--method.arch_lr", text])
    assert build_config(d).method.arch_lr == value
    preset = tmp_path / "p.yaml"
    preset.write_text(f"method: {{name: pc-darts, arch_lr: {text}}}\nsearch: {{lr: {text}, lr_min: 0}}\n")
    args = build_parser().parse_args(["search", "--preset", str(preset)])
    cfg = build_config(search_config_dict(args, []))
    assert cfg.method.arch_lr == value and cfg.search.lr == value
    (tmp_path / "config.yaml").write_text(f"method: {{name: darts, arch_lr: {text}}}\n")
    assert load_config_file(tmp_path / "config.yaml").method.arch_lr == value
    assert build_train_config({"train": {"lr": text}}).train.lr == value


@pytest.mark.parametrize("text", ["1e3", "1.0e3", "10.0"])
def test_ints_written_as_floats_are_refused_with_a_clear_message(capsys, tmp_path, text):
    code, _, err = run_cli(["search", "--out", tmp_path / "r", "--search.epochs", text], capsys)
    assert code == 2 and "search.epochs must be a whole number" in err and not (tmp_path / "r").exists()


def test_readme_override_example_works(tmp_path, capsys):
    code, _, err = run_cli(["search", "--out", tmp_path / "r", *TINY, "--method.arch_lr", "1e-3"], capsys)
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["method"]["arch_lr"] == 1e-3


# ---------------------------------------------------------------- 3. divergence

def test_search_divergence_stops_at_once_and_writes_no_genotype(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run_cli(["search", "--out", out, *TINY, "--search.lr", "1e30"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "weight step's loss became non-finite" in err and "search.lr=1e+30" in err
    assert "epoch 1/2 step 2/3" in err  # caught at the first bad step on the CPU (step 1 blew the weights up)
    assert not out.exists()  # nothing good was written: nothing is left


@pytest.mark.parametrize("step", ["weight", "arch"])
def test_divergence_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch, step):
    """The loss turns NaN in epoch 2: epoch 1's checkpoint stays, no genotype.json, exit 2."""
    if step == "weight":
        real = search_mod.weight_step

        def poisoned(method, optimizer, batch, ctx, **kw):
            loss, logits = real(method, optimizer, batch, ctx, **kw)
            return (loss * float("nan") if ctx.epoch >= 1 else loss), logits
        monkeypatch.setattr(search_mod, "weight_step", poisoned)
    else:
        real = METHODS.get("pc-darts").arch_step

        def poisoned(self, ctx, train_batch, arch_batch):
            out = real(self, ctx, train_batch, arch_batch)
            return {**out, "loss": out["loss"] * float("nan")}
        monkeypatch.setattr(METHODS.get("pc-darts"), "arch_step", poisoned)
    out = tmp_path / "r"
    code, _, err = run_cli(["search", "--out", out, *TINY], capsys)
    assert code == 2, err
    assert ("search.lr" if step == "weight" else "method.arch_lr") in err
    assert f"the last good checkpoint {out / 'checkpoint.pt'} is kept" in err
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in ck["supernet"].values() if v.is_floating_point())
    assert not (out / "genotype.json").exists()


def test_train_divergence_is_detected(tmp_path, capsys):
    out = tmp_path / "t"
    code, _, err = run_cli(["train", "DARTS_V2", "--out", out, *TRAIN_TINY, "--train.lr", "1e30"], capsys)
    assert code == 2 and "training loss became non-finite" in err and "train.lr=1e+30" in err, err
    assert not (out / "metrics.json").exists()


def test_watch_reads_the_device_flag_only_every_period():
    from pcdarts.runs import NonFiniteWatch
    w = NonFiniteWatch(("a", "b"), torch.device("meta"), 10)
    assert w.period == 10 and not w.due(3) and w.due(10)
    cpu = NonFiniteWatch(("a", "b"), torch.device("cpu"), 10)
    assert cpu.period == 1
    cpu.observe("b", torch.tensor(float("inf")))
    cpu.observe("a", torch.tensor(1.0))
    assert cpu.first_bad() == "b"


# ---------------------------------------------------------------- 4. damaged checkpoints

def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x80junk" * 10}[how])


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_damaged_search_checkpoint_is_one_line(search_run, tmp_path, capsys, how):
    x = copy_run(search_run, tmp_path / "X")
    _damage(x / "checkpoint.pt", how)
    for cmd in (["search", "--resume", x], ["derive", x]):
        code, _, err = run_cli(cmd, capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert f"{x / 'checkpoint.pt'} is damaged" in err
        assert f"rename {x / 'checkpoint.prev.pt'} to {x / 'checkpoint.pt'}" in err  # the older one is named


def test_previous_checkpoint_resumes(search_run, tmp_path, capsys):
    x = copy_run(search_run, tmp_path / "X")
    assert torch.load(x / "checkpoint.prev.pt", weights_only=True)["epoch"] == 1
    os.replace(x / "checkpoint.prev.pt", x / "checkpoint.pt")
    code, out, err = run_cli(["search", "--resume", x, ], capsys)
    assert code == 0, err


@pytest.mark.parametrize("how", ["truncated", "empty"])
def test_damaged_training_checkpoint_is_one_line(train_run, tmp_path, capsys, how):
    x = copy_run(train_run, tmp_path / "X")
    (x / "metrics.json").unlink()  # unfinished, so resume reads the checkpoint
    _damage(x / "checkpoint.pt", how)
    for cmd in (["train", "--resume", x], ["eval", x]):
        code, _, err = run_cli(cmd, capsys)
        assert code == 2 and err.count("\n") == 1 and f"{x / 'checkpoint.pt'} is damaged" in err, err


# ---------------------------------------------------------------- 5. every numeric field has a range

def _config_classes():
    for name, cls in SECTIONS.items():
        yield "search", name, cls
    for name in METHODS.names():
        yield "search", "method", METHODS.get(name).Config
    for name, cls in TRAIN_SECTIONS.items():
        yield "train", name, cls


def _bad_values(rng, base):
    vals = []
    if rng.lo is not None:
        vals.append(rng.lo if rng.lo_open else rng.lo - 1)
    if rng.hi is not None:
        vals.append(rng.hi if rng.hi_open else rng.hi + 1)
    if base is float or (getattr(base, "__origin__", None) is tuple and base.__args__[0] is float):
        vals.append(float("nan"))  # an int field (or int tuple) is refused a float by its type
    return vals


@pytest.mark.parametrize("kind,section,cls", list(_config_classes()),
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_every_numeric_field_has_its_range_checked(kind, section, cls):
    hints = range_hints(cls)
    for f in dataclasses.fields(cls):
        rng, base = field_range(hints[f.name])
        numeric = base in (int, float) or getattr(base, "__origin__", None) is tuple
        if not numeric:
            continue
        assert rng is not None, f"{cls.__name__}.{f.name} has no declared range (use an alias from pcdarts.ranges)"
        for bad in _bad_values(rng, base):
            value = int(bad) if base is int else bad
            if getattr(base, "__origin__", None) is tuple:
                default = f.default if isinstance(f.default, tuple) and f.default else (1.0,)
                value = (value,) * len(default)
            d = {section: {f.name: value}}
            if section == "method":
                d["method"]["name"] = next(n for n in METHODS.names() if METHODS.get(n).Config is cls)
            with pytest.raises(ConfigError, match=rf"{section}\.{f.name} must be"):
                (build_config if kind == "search" else build_train_config)(d)


def test_range_violations_from_python_are_caught_too():
    from pcdarts.search.config import Config, SpaceConfig
    with pytest.raises(ConfigError, match=r"space\.C must be >= 1, got 0"):
        Config(space=SpaceConfig(C=0))
    with pytest.raises(ConfigError, match=r"data\.max_samples"):
        check_ranges(dataclasses.replace(build_config({}).data, max_samples=-5), "data")


@pytest.mark.parametrize("args,message", [
    (["--space.C", "0"], "space.C must be >= 1, got 0"),
    (["--method.arch_lr", "-1"], "method.arch_lr must be >= 0, got -1.0"),
    (["--data.max_samples", "-5"], "data.max_samples must be >= 1, got -5"),
    (["--search.lr", "nan"], "search.lr must be a finite number >= 0"),
])
def test_out_of_range_values_are_refused_before_anything_runs(tmp_path, capsys, args, message):
    code, _, err = run_cli(["search", "--out", tmp_path / "r", *args], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- 6. no empty --out on errors

@pytest.mark.parametrize("args", [["--data", "cifar10:/nonexistent"], ["--space.C", "0"],
                                  ["--device", "cuda"]])
def test_errors_leave_no_run_directory(tmp_path, capsys, args):
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = run_cli(["search", "--out", tmp_path / "r", *TINY, *args], capsys)
    assert code == 2, err
    assert not (tmp_path / "r").exists()
    code, _, err = run_cli(["train", "DARTS_V2", "--out", tmp_path / "t", *TRAIN_TINY,
                            *(args if args[0] != "--space.C" else ["--model.C", "0"])], capsys)
    assert code == 2 and not (tmp_path / "t").exists(), err


# ---------------------------------------------------------------- 7, 11. SIGTERM, 1-based numbering

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_mid_epoch_checkpoint_and_says_how_to_resume(tmp_path, capsys, monkeypatch, sig):
    real = search_mod.Searcher.search_step
    calls = []

    def step(self, arch_active, ctx):
        real(self, arch_active, ctx)
        calls.append(1)
        if len(calls) == 5:  # during epoch 2 (3 steps per epoch)
            signal.raise_signal(sig)
    monkeypatch.setattr(search_mod.Searcher, "search_step", step)
    out = tmp_path / "r"
    code, stdout, err = run_cli(["search", "--out", out, *TINY[:-3], "--run.plots", "false"], capsys)
    assert code == 128 + sig, err  # SIGINT 130, SIGTERM 143
    assert f"{sig.name}: stopped in epoch 2/2 after step 2/3; state saved. " \
           f"Continue with: pcdarts search --resume {out}" in stdout
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (1, 2)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.setattr(search_mod.Searcher, "search_step", real)
    code, stdout, err = run_cli(["search", "--resume", out], capsys)
    assert code == 0 and "resuming at epoch 2/2, step 3/3" in stdout, err


def test_sigterm_stops_training_too(tmp_path, capsys, monkeypatch):
    train_mod = importlib.import_module("pcdarts.train.trainer")
    real = train_mod.Trainer.train_step
    calls = []

    def step(self, x, y):
        real(self, x, y)
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGTERM)
    monkeypatch.setattr(train_mod.Trainer, "train_step", step)
    out = tmp_path / "t"
    code, stdout, _ = run_cli(["train", "DARTS_V2", "--out", out, *TRAIN_TINY[1:]], capsys)
    assert code == 143
    assert f"SIGTERM: stopped in epoch 1/2 after step 2/3; state saved. Continue with: pcdarts train --resume {out}" \
        in stdout


# ---------------------------------------------------------------- 8, 9. run kinds, missing genotype

def test_run_kinds_mixed_up_name_the_right_command(search_run, train_run, tmp_path, capsys):
    for cmd in (["search", "--resume", train_run], ["derive", train_run]):
        code, _, err = run_cli(cmd, capsys)
        name = " ".join(str(c) for c in cmd[:-1])
        assert code == 2 and err.startswith(f"error: pcdarts {name} {train_run}: this is a training run"), err
        assert f"pcdarts train --resume {train_run}" in err and f"pcdarts eval {train_run}" in err
    code, _, err = run_cli(["train", "--resume", search_run], capsys)
    assert code == 2 and f"this is a search run; continue it with `pcdarts search --resume {search_run}`" in err
    code, _, err = run_cli(["eval", search_run], capsys)
    assert code == 2 and "this is a search run" in err
    (tmp_path / "notes").mkdir()
    code, _, err = run_cli(["derive", tmp_path / "notes"], capsys)
    assert code == 2 and err.startswith(f"error: pcdarts derive {tmp_path / 'notes'}: not a pcdarts search run")


def test_train_without_genotype_says_so(capsys):
    code, _, err = run_cli(["train", "--train.lr", "1e-3"], capsys)
    assert code == 2 and "pcdarts train needs a genotype" in err, err


def test_overrides_are_split_before_positionals():
    rest, ov = split_overrides(["train", "--train.lr", "1e-3", "DARTS_V2", "--out", "x.y", "--model.C=8"])
    assert rest == ["train", "DARTS_V2", "--out", "x.y"] and ov == ["--train.lr", "1e-3", "--model.C=8"]


# ---------------------------------------------------------------- 10. show and history agree

def test_show_and_history_report_the_same_network(search_run, capsys):
    last = [json.loads(line) for line in (search_run / "history.jsonl").read_text().splitlines()][-1]
    assert last["genotype_network"] == "DARTS CIFAR network C=36, 20 cells, 10 classes, 1x16x16 input"
    for source in (search_run, search_run / "genotype.json"):
        code, out, _ = run_cli(["show", source], capsys)
        assert code == 0
        assert f"parameters: {last['genotype_params_m']:.3f} M" in out
        assert f"multiply-adds: {last['genotype_macs_m']:.1f} M ({last['genotype_network']})" in out
    code, out, _ = run_cli(["show", "DARTS_V2"], capsys)
    assert "(DARTS CIFAR network C=36, 20 cells, 10 classes, 3x32x32 input)" in out


# ---------------------------------------------------------------- 12. warnings are one clean line

def test_partial_cifar_warning_is_one_clean_line(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 48), ("test_batch", 8)):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": [int(v) for v in rng.integers(0, 10, n)]}, f, protocol=2)
    code, _, err = run_cli(["search", "--data", f"cifar10:{folder}", "--out", tmp_path / "r", *TINY], capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if "batch" in line]
    assert lines and all(line.startswith("warning: ") and ".py:" not in line for line in lines), err


# ---------------------------------------------------------------- 13. plots land next to the genotype

def test_plot_writes_next_to_the_genotype(search_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x = copy_run(search_run, tmp_path / "X")
    code, out, err = run_cli(["plot", x, "--format", "svg", "--backend", "matplotlib"], capsys)
    assert code == 0, err
    assert (x / "genotype_normal.svg").is_file() and (x / "genotype_reduce.svg").is_file()
    assert not list(tmp_path.glob("*.svg"))
    a = "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|none~0|none~1|nor_conv_1x1~2|"
    b = "|avg_pool_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|none~0|none~1|nor_conv_1x1~2|"
    for g in (a, b):
        assert run_cli(["plot", g, "--backend", "matplotlib"], capsys)[0] == 0
    assert len(list(tmp_path.glob("genotype-*_cell.png"))) == 2  # two cells, two files


# ---------------------------------------------------------------- 14, 15. the main job runs clean

def test_search_with_pictures_runs_clean_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "r"
    code, stdout, err = run_cli(["search", "--out", out, *TINY[:-2]], capsys)
    assert code == 0 and "could not draw" not in err and "warning" not in err, err
    assert (out / "arch_weights.png").is_file() and (out / "genotype_normal.png").is_file()
    assert "arch weights:  mean entropy" in stdout and "of uniform (1.00 = not moved)" in stdout
    assert f"next:          pcdarts train {out / 'genotype.json'} --preset short" in stdout
    assert "cell size:" in stdout and "M parameters" in stdout


def test_matplotlib_is_a_core_dependency():
    import tomllib
    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("matplotlib") for d in deps["dependencies"])


def test_arch_weight_summary():
    from pcdarts.analysis.stats import arch_weight_summary
    assert arch_weight_summary({"normal": [[0.25] * 4] * 3})["entropy"] == pytest.approx(1.0)
    s = arch_weight_summary({"normal": [[1.0, 0, 0, 0]], "reduce": [[0.25] * 4]})
    assert s["entropy"] == pytest.approx(0.5) and s["max"] == pytest.approx(0.625) and s["uniform"] == 0.25
    assert arch_weight_summary(None) == {}


@pytest.mark.slow
def test_default_search_moves_the_architecture_weights(tmp_path):
    """The main job (the quick preset) must end clearly away from uniform weights, with a
    convolution-heavy normal cell (the old preset's pool-dominated one read as collapse)."""
    from pcdarts.analysis.stats import arch_weight_summary
    res = search({"run": {"out": str(tmp_path / "q"), "progress": False, "plots": False, "threads": 1}})
    moved = arch_weight_summary(res.history[-1]["arch_weights"])
    assert moved["entropy"] < 0.95 and moved["max"] > 2 * moved["uniform"], moved  # 1.00 and 0.127 before
    convs = [op for op, _ in res.genotype.normal if "conv" in op]
    assert len(convs) >= 5, res.genotype  # 6-7 of 8 for seeds 0-2



@pytest.mark.gpu
def test_search_steps_make_no_host_sync_on_cuda(tmp_path):
    """The divergence watch (and the whole step) must not sync the host with the GPU per step:
    CUDA's sync debug mode turns any synchronising call inside the steps into an error."""
    from pcdarts.search.config import build_config
    from tests.conftest import tiny_config
    cfg = build_config(tiny_config(tmp_path, run={"device": "cuda"}, method={"name": "pc-darts",
                                                                               "warmup_epochs": 0, "k": 2},
                                   search={"log_every": 1000}))
    s = search_mod.Searcher(cfg, tmp_path / "r")
    ctx = s.context()
    s.search_step(True, ctx)  # warm-up: first-call allocations and lazy initialisation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(2, 5):
            s.search_step(True, ctx)
            assert not s.watch.due(step)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert s.watch.first_bad() is None
