"""The masked-reconstruction objective (``--objective mae``, ALGORITHMS §9) and the label-free data path."""
from __future__ import annotations

import dataclasses
import json
import pickle
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import pcdarts
from pcdarts.cli import main
from pcdarts.config import (ConfigError, SpaceConfig, build_config, load_config_file, merge_onto_preset,
                            scale_budget)
from pcdarts.data.sources import load_dataset
from pcdarts.objectives.base import EpochEnd, ObjectiveSetup
from pcdarts.objectives.mae import (MaeConfig, MaskedReconstruction, draw_masks, masked_count, masked_mse, patch_grid,
                                    pixel_mask, stage_outputs)
from pcdarts.ranges import field_range, range_hints
from pcdarts.registry import DATASETS, METHODS, OBJECTIVES, UnknownNameError
from pcdarts.search.searcher import Searcher, new_run_dir
from pcdarts.spaces import get_space
from tests.conftest import tiny_method

from tests.conftest import SHARED_CIFAR

MAE = {"name": "mae"}


def _searcher(cfg_dict):
    cfg = build_config(cfg_dict)
    return Searcher(cfg, new_run_dir(cfg))


# ---------------------------------------------------------------- the loss, by hand

def test_loss_is_the_mse_of_the_masked_patches_only():
    # one 1x4x4 image, 2x2 patches: patches 0 and 3 masked
    target = torch.tensor([[1., 2., 9., 9.],
                           [3., 4., 9., 9.],
                           [9., 9., 2., 2.],
                           [9., 9., 2., 2.]]).view(1, 1, 4, 4)
    pred = torch.zeros(1, 1, 4, 4)
    mask = torch.tensor([[True, False, False, True]])
    # patch 0: (1 + 4 + 9 + 16) / 4 = 7.5; patch 3: 4; mean over the masked patches = 5.75
    assert masked_mse(pred, target, mask, 2).item() == pytest.approx(5.75)
    # the unmasked pixels of target and prediction take no part, even as NaN
    hidden = pixel_mask(mask, (2, 2), 2)
    t2 = torch.where(hidden, target, torch.full_like(target, float("nan")))
    p2 = torch.where(hidden, pred, torch.randn_like(pred) * 100)
    assert masked_mse(p2, t2, mask, 2).item() == pytest.approx(5.75)
    # norm_pix_loss: patch 0 normalised (mean 2.5, var 1.25) against 0 gives var / (var + eps) ~ 1;
    # the constant patch 3 normalises to 0 and costs nothing
    assert masked_mse(pred, target, mask, 2, norm_pix_loss=True).item() == pytest.approx(0.5, abs=1e-5)
    # channels count inside a patch: a second channel with error 1 everywhere
    two = torch.cat([target, target + 1], 1)
    assert masked_mse(torch.cat([pred, target], 1), two, mask, 2).item() == pytest.approx((5.75 + 1) / 2)


def test_gradient_reaches_only_masked_pixels_of_the_prediction():
    pred = torch.randn(2, 3, 8, 8, requires_grad=True)
    mask = draw_masks(2, 4, 2, torch.Generator().manual_seed(0))
    masked_mse(pred, torch.randn(2, 3, 8, 8), mask, 4).backward()
    hidden = pixel_mask(mask, (2, 2), 4).expand(-1, 3, -1, -1)
    assert (pred.grad[~hidden] == 0).all() and (pred.grad[hidden] != 0).all()


# ---------------------------------------------------------------- masks

def test_masks_respect_the_ratio_per_image_the_patch_grid_and_the_seed():
    assert patch_grid(32, 32, 4) == (8, 8)
    assert [masked_count(64, r) for r in (0.5, 0.75, 0.01, 1.0)] == [32, 48, 1, 64]
    g = torch.Generator().manual_seed(7)
    m = draw_masks(16, 64, 32, g)
    assert m.shape == (16, 64) and m.dtype == torch.bool
    assert (m.sum(1) == 32).all()  # exactly the ratio in every image
    assert len({tuple(r.tolist()) for r in m}) == 16  # independent per image
    again = draw_masks(16, 64, 32, torch.Generator().manual_seed(7))
    assert torch.equal(m, again)
    assert not torch.equal(m, draw_masks(16, 64, 32, torch.Generator().manual_seed(8)))
    # the pixel mask covers exactly the masked patches' squares (row-major patch order)
    one = torch.zeros(1, 4, dtype=torch.bool)
    one[0, 1] = True  # top-right patch of a 2x2 grid
    px = pixel_mask(one, (2, 2), 3)[0, 0]
    assert px[:3, 3:].all() and px.sum() == 9
    with pytest.raises(ConfigError, match=r"objective\.patch_size=5 must divide the input size 32x32"):
        patch_grid(32, 32, 5)


def test_the_masked_input_is_zero_on_masked_patches_and_untouched_elsewhere():
    seen = {}

    class Net(torch.nn.Module):
        def forward_features(self, x, mixing):
            seen["x"] = x
            return [x]

    obj = MaskedReconstruction(MaeConfig(patch_size=2, decoder_dim=4), [(3, 4, 4)], (3, 4, 4))
    x = torch.randn(2, 3, 4, 4) + 5
    obj(Net(), (x, None), None)
    hidden = pixel_mask(draw_masks(2, 4, 2, torch.Generator().manual_seed(3)), (2, 2), 2).expand(-1, 3, -1, -1)
    assert (seen["x"][hidden] == 0).all() and torch.equal(seen["x"][~hidden], x[~hidden])


# ---------------------------------------------------------------- config

def test_objective_section_cli_shorthand_and_the_older_search_objective():
    cfg = build_config({"objective": {"name": "mae", "mask_ratio": 0.75, "decoder": "single-scale"}})
    assert (cfg.objective_name, cfg.objective.mask_ratio, cfg.objective.decoder) == ("mae", 0.75, "single-scale")
    assert cfg.to_dict()["objective"] == {"name": "mae", **dataclasses.asdict(cfg.objective)}
    assert build_config({}).objective_name == "cross-entropy"
    # the older spelling (run directories and presets written before the section existed)
    old = build_config({"search": {"objective": "mae"}})
    assert old.objective_name == "mae" and old.objective == MaeConfig()
    assert build_config({"search": {"objective": "mae"}, "objective": {"name": "mae"}}).objective_name == "mae"
    with pytest.raises(ConfigError, match="search.objective='cross-entropy' and objective.name='mae' disagree"):
        build_config({"search": {"objective": "cross-entropy"}, "objective": {"name": "mae"}})
    with pytest.raises(UnknownNameError, match="unknown objective 'nope'"):
        build_config({"objective": {"name": "nope"}})
    with pytest.raises(ConfigError, match=r"unknown key objective\.k"):
        build_config({"objective": {"name": "mae", "k": 2}})
    with pytest.raises(ConfigError, match=r"objective\.decoder must be one of multi-scale, single-scale"):
        build_config({"objective": {"name": "mae", "decoder": "deep"}})
    with pytest.raises(ConfigError, match=r"objective\.patch_size=3 must divide the input size 16x16"):
        build_config({"objective": {"name": "mae", "patch_size": 3}, "data": {"input_size": 16}})
    # naming another objective than the preset's drops the preset's objective knobs
    d = merge_onto_preset("mae_darts_cifar10", {"objective": {"name": "cross-entropy"}})
    assert d["objective"] == {"name": "cross-entropy"}
    preset = build_config(merge_onto_preset("mae_darts_cifar10", {}))
    assert (preset.method_name, preset.method.order, preset.space.C, preset.space.layers) == ("darts", 1, 16, 8)
    assert scale_budget(preset, 2)[0].objective == preset.objective


def test_an_old_run_config_with_search_objective_still_loads(tmp_path):
    d = build_config({}).to_dict()
    d.pop("objective")
    d["search"]["objective"] = "cross-entropy"
    import yaml
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(d))
    assert load_config_file(tmp_path / "config.yaml").objective_name == "cross-entropy"


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(MaeConfig)])
def test_every_numeric_objective_field_has_its_range_checked(name):
    rng, base = field_range(range_hints(MaeConfig)[name])
    if base not in (int, float):
        return
    assert rng is not None, f"MaeConfig.{name} has no declared range"
    bad = rng.lo if rng.lo_open else rng.lo - 1
    with pytest.raises(ConfigError, match=rf"objective\.{name} must be"):
        build_config({"objective": {"name": "mae", name: int(bad) if base is int else bad}})


# ---------------------------------------------------------------- no label is read

class LabelRead(AssertionError):
    pass


class NeverRead(torch.Tensor):
    """Labels that raise on any use but moving, indexing and counting them once ``armed``
    (building the searcher copies them to the device and fingerprints them for the manifest)."""

    armed = False
    MOVES = {"__get__", "__getitem__", "__len__", "numel", "dim", "to", "is_floating_point", "is_complex"}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if cls.armed and name not in cls.MOVES:
            raise LabelRead(f"a label was read: {name}")
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.fixture
def never_read_labels():
    if "test-never-read" not in DATASETS:
        @DATASETS.register("test-never-read")
        def load(path, split, input_size=None, channels=None):
            ds = load_dataset("digits", split)
            return dataclasses.replace(ds, labels=ds.labels.as_subclass(NeverRead), name="test-never-read")
    NeverRead.armed = False
    yield
    NeverRead.armed = False


def test_a_whole_mae_search_reads_no_label(tiny, never_read_labels):
    s = _searcher(tiny(method={"name": "pc-darts", "warmup_epochs": 0, "k": 2}, objective=MAE,
                       data={"dataset": "test-never-read", "max_samples": 32}, search={"epochs": 1},
                       run={"plots": True}))
    assert isinstance(s.train_loader.labels, NeverRead)
    NeverRead.armed = True
    result = s.run()  # weight and architecture steps, evaluation, derivation, pictures
    assert not result.interrupted and (result.run_dir / "genotype.json").is_file()
    assert (result.run_dir / "reconstructions" / "epoch_001.png").is_file()
    last = result.history[-1]
    assert "train_acc" not in last and "arch_acc" not in last and "valid_acc" not in last
    assert last["valid_loss"] > 0 and last["arch_loss"] > 0
    # and the guard bites: cross-entropy on the same labels is caught
    NeverRead.armed = False
    ce = _searcher(tiny(data={"dataset": "test-never-read", "max_samples": 32}, run={"out": str(s.run_dir) + "-ce"}))
    NeverRead.armed = True
    with pytest.raises(LabelRead):
        ce.search_step(True, ce.context())


def _write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")


def test_unlabelled_folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    _write_pngs(tmp_path / "a", rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8))
    _write_pngs(tmp_path / "b" / "deeper", rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset(f"unlabelled:{tmp_path}", "train")
    assert ds.images.shape == (8, 3, 8, 8) and ds.num_classes == 1
    assert (ds.labels == -1).all()
    assert not DATASETS.get("unlabelled").labelled
    with pytest.raises(ConfigError, match="objective 'cross-entropy' reads labels, but data.dataset 'unlabelled'"):
        build_config({"data": {"dataset": "unlabelled", "path": str(tmp_path)}})
    build_config({"data": {"dataset": "unlabelled", "path": str(tmp_path)}, "objective": MAE})
    with pytest.raises(pcdarts.data.DataError, match="no test split"):
        load_dataset(f"unlabelled:{tmp_path}", "test")


# ---------------------------------------------------------------- decoder: trained, checkpointed

def test_decoder_parameters_train_with_the_weights_and_are_checkpointed(tiny):
    s = _searcher(tiny(objective=MAE))
    dec = list(s.objective.decoder.parameters())
    assert dec and all(any(p is q for q in s.weight_params) for p in dec)
    before = [p.detach().clone() for p in dec]
    s.weight_step(s.train_loader.next(), s.context())
    assert all(p.grad is not None for p in dec) and any(float(p.grad.abs().sum()) > 0 for p in dec)
    assert all(not torch.equal(a, p) for a, p in zip(before, dec))
    state = s.state_dict()["objective"]
    names = {n for n, _ in s.objective.decoder.named_parameters()}
    assert {f"decoder.{n}" for n in names} <= set(state) and "_extra_state" in state
    assert not s.objective_has_accuracy
    assert set(s.evaluate()) == {"valid_loss"}


@pytest.mark.parametrize("method,space", [("pc-darts", "darts"), ("drnas", "nb201")])
def test_resume_equals_the_uninterrupted_run(tiny, full_and_resumed, method, space):
    m = {"name": method, "warmup_epochs": 1, "k": 2} if method == "pc-darts" else {"name": method}
    base = tiny(method=m, objective=MAE, search={"epochs": 2}, run={"plots": method == "drnas"},
                space={"name": space, "layers": 1} if space == "nb201" else {})
    full, resumed = full_and_resumed(base, 4)
    ck_full = torch.load(full.run_dir / "checkpoint.pt", weights_only=True)
    ck_res = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)
    for part_name in ("supernet", "objective"):
        for k, v in ck_full[part_name].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, ck_res[part_name][k]), (part_name, k)
    assert torch.equal(ck_full["objective"]["_extra_state"]["mask_generator"],
                       ck_res["objective"]["_extra_state"]["mask_generator"])
    assert (resumed.run_dir / "reconstructions" / "epoch_002.png").is_file() == (method == "drnas")


def test_drawing_the_pictures_does_not_change_the_search(tiny):
    """The epoch-end hook runs the method's mixing (DrNAS: a Dirichlet draw from the arch
    generator) and draws picture masks; the random states are put back after it."""
    runs = {}
    for plots in (True, False):
        d = tiny(method={"name": "drnas"}, objective=MAE, search={"epochs": 2}, space={"name": "nb201", "layers": 1},
                 run={"plots": plots})
        d["run"]["out"] += f"-{plots}"
        runs[plots] = pcdarts.search(d)
    assert runs[True].history[-1]["arch_weights"] == runs[False].history[-1]["arch_weights"]
    assert [r["train_loss"] for r in runs[True].history] == [r["train_loss"] for r in runs[False].history]
    assert (runs[True].run_dir / "reconstructions" / "epoch_001.png").is_file()
    assert not (runs[False].run_dir / "reconstructions").exists()


BILEVEL = [n for n in METHODS.names() if not METHODS.get(n).owns_step]


@pytest.mark.parametrize("space", ["darts", "nb201"])
@pytest.mark.parametrize("method", BILEVEL)
def test_one_mae_search_step_per_bilevel_method_and_space(tiny, method, space):
    s = _searcher(tiny(method=tiny_method(method), objective=MAE,
                       space={"name": space, "layers": 3 if space == "darts" else 1}))
    a0 = [p.detach().clone() for p in s.method.arch_parameters()]
    d0 = [p.detach().clone() for p in s.objective.decoder.parameters()]
    s.search_step(arch_active=s.method.is_arch_active(0), ctx=s.context())
    assert torch.isfinite(s.meters["loss"]) and not s.objective_has_accuracy
    assert all(not torch.equal(a, p) for a, p in zip(d0, s.objective.decoder.parameters()))
    changed = any(not torch.equal(a, b) for a, b in zip(a0, s.method.arch_parameters()))
    assert changed == s.method.has_arch


def test_the_picture_is_skipped_quietly_without_matplotlib_or_plots(tmp_path, monkeypatch, recwarn):
    setup = _setup("darts", C=4, layers=3)
    obj = MaskedReconstruction.build(MaeConfig(decoder_dim=8, pictures=2), setup)
    end = EpochEnd(0, 1, tmp_path, True, setup.supernet, lambda: (torch.randn(4, 3, 16, 16), None),
                   setup.uniform_mixing)
    obj.on_epoch_end(dataclasses.replace(end, plots=False))
    assert not (tmp_path / "reconstructions").exists()
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # the import fails like a missing package
    obj.on_epoch_end(end)
    assert not (tmp_path / "reconstructions").exists() and not recwarn.list
    monkeypatch.undo()
    obj.on_epoch_end(end)
    assert (tmp_path / "reconstructions" / "epoch_001.png").is_file() and not recwarn.list


# ---------------------------------------------------------------- decoders on every space

def _setup(space_name, **space):
    torch.manual_seed(0)
    space_obj = get_space(space_name)
    scfg = SpaceConfig(name=space_name, impl="fast", **space)
    net = space_obj.build_supernet(scfg, k=1, num_classes=10, in_channels=3)
    return ObjectiveSetup(net, space_obj, scfg, (3, 16, 16), 10, torch.device("cpu"), seed=0)


@pytest.mark.parametrize("space_name,space,stages", [
    ("darts", {"C": 4, "layers": 3}, 3), ("nb201", {"C": 4, "layers": 1}, 3),
    ("broad", {"C": 4, "layers": 2}, 2)])
@pytest.mark.parametrize("decoder", ["multi-scale", "single-scale"])
def test_both_decoders_build_and_reconstruct_on_every_space(space_name, space, stages, decoder):
    setup = _setup(space_name, **space)
    obj = MaskedReconstruction.build(MaeConfig(decoder=decoder, decoder_dim=8), setup)
    assert len(obj.stages) == stages
    assert len(obj.decoder.lateral) == (stages if decoder == "multi-scale" else 1)
    x = torch.randn(4, 3, 16, 16)
    mix = setup.uniform_mixing()
    loss, metrics = obj(setup.supernet, (x, None), mix)
    assert torch.isfinite(loss) and metrics == {"n": 4}
    loss.backward()
    assert all(p.grad is not None for p in obj.decoder.parameters())
    # what each decoder reads: the single-scale one ignores every stage but the last
    feats = setup.supernet.forward_features(x, mix)
    picked = [feats[i].detach() for i in obj.stages]
    shallow = [f + 1.0 for f in picked[:-1]] + [picked[-1]]
    same = torch.equal(obj.decoder(picked), obj.decoder(shallow))
    assert same == (decoder == "single-scale")


def test_stage_outputs_are_the_last_feature_of_each_resolution():
    shapes = [(16, 32, 32), (16, 32, 32), (32, 16, 16), (32, 16, 16), (64, 8, 8)]
    assert stage_outputs(shapes) == [1, 3, 4]


def test_fast_and_reference_paths_give_the_same_loss_and_gradients():
    setup = _setup("darts", C=4, layers=3)
    obj = MaskedReconstruction.build(MaeConfig(decoder_dim=8), setup)
    net, x, mix = setup.supernet, torch.randn(4, 3, 16, 16), setup.uniform_mixing()
    state = obj.generator.get_state()
    out = []
    for reference in (False, True):
        obj.generator.set_state(state)
        net.zero_grad()
        obj.zero_grad()
        if reference:
            with net.reference():
                loss, _ = obj(net, (x, None), mix)
        else:
            loss, _ = obj(net, (x, None), mix)
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in (*net.parameters(), *obj.parameters())
                                    if p.grad is not None]))
    (l0, g0), (l1, g1) = out
    assert torch.allclose(l0, l1, rtol=1e-5) and len(g0) == len(g1)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_building_the_objective_changes_no_state_of_the_supernet_or_the_rng():
    setup = _setup("darts", C=4, layers=3, channel_mode="random")
    before = {k: v.clone() for k, v in setup.supernet.state_dict().items()}
    rng = torch.get_rng_state()
    MaskedReconstruction.build(MaeConfig(decoder_dim=8), setup)  # decoder init draws; the probe must not
    torch.set_rng_state(rng)
    setup.feature_shapes()
    assert torch.equal(torch.get_rng_state(), rng)
    after = setup.supernet.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert setup.supernet.training


# ---------------------------------------------------------------- the command line

def _cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


TINY_CLI = ["--space.C", 4, "--space.layers", 3, "--search.epochs", 1, "--method.warmup_epochs", 0,
            "--search.batch_size", 8, "--no-progress"]


def _check_run(out, stdout):
    assert f"run directory: {out}" in stdout and "acc " not in stdout
    assert (out / "genotype.json").is_file()
    assert (out / "reconstructions" / "epoch_001.png").is_file()
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert "train_acc" not in history[-1] and history[-1]["train_loss"] > 0


def test_cli_search_on_an_unlabelled_folder(tmp_path, capsys):
    images = tmp_path / "images"
    _write_pngs(images, np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8))
    out = tmp_path / "run"
    code, stdout, err = _cli(["search", "--objective", "mae", "--data", f"unlabelled:{images}", "--out", out,
                              *TINY_CLI], capsys)
    assert code == 0, err
    _check_run(out, stdout)
    assert load_config_file(out / "config.yaml").objective_name == "mae"
    assert "--data LABELLED_SET:PATH" in stdout  # training needs labels: the summary does not suggest this set
    # the size is of a network with a 1-output head, not of a "1 classes" classifier (here and in pcdarts show)
    head = "1-output head (unlabelled data: no classes), 3x8x8 input)"
    assert "cell size:" in stdout and head in stdout and "1 classes" not in stdout, stdout
    code, shown, err = _cli(["show", out], capsys)
    assert code == 0 and head in shown, shown + err
    # NB201 too (one step)
    out201 = tmp_path / "run201"
    code, stdout, err = _cli(["search", "--objective", "mae", "--space", "nb201", "--data", f"unlabelled:{images}",
                              "--out", out201, *TINY_CLI, "--space.layers", 1, "--data.max_samples", 16], capsys)
    assert code == 0, err
    _check_run(out201, stdout)
    # cross-entropy on it is refused before anything runs
    code, _, err = _cli(["search", "--data", f"unlabelled:{images}", "--out", tmp_path / "ce", *TINY_CLI], capsys)
    assert code == 2 and "reads labels" in err and not (tmp_path / "ce").exists()


@pytest.mark.skipif(not (SHARED_CIFAR / "data_batch_1").is_file(), reason="shared CIFAR-10 batch not present")
def test_cli_search_on_unlabelled_cifar10_images(tmp_path, capsys):
    with open(SHARED_CIFAR / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    images = np.asarray(batch["data"][:40], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    folder = tmp_path / "cifar"
    _write_pngs(folder, images)
    out = tmp_path / "run"
    code, stdout, err = _cli(["search", "--objective", "mae", "--data", f"unlabelled:{folder}", "--out", out,
                              *TINY_CLI, "--objective.decoder_dim", 16], capsys)
    assert code == 0, err
    _check_run(out, stdout)
    assert json.loads((out / "manifest.json").read_text())["network"]["input_size"] == 32


def test_mae_is_registered_with_a_description():
    assert "mae" in OBJECTIVES and "docs/methods.md" in OBJECTIVES.describe("mae")


def test_training_on_an_unlabelled_folder_is_refused_in_one_line(tmp_path, capsys):
    for i in range(4):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    code = main(["train", "DARTS_V2", "--data", f"unlabelled:{tmp_path}", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "needs labels" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_zero_shot_pruning_on_an_unlabelled_folder(tmp_path, capsys):
    """--prune measures the pruned step without labels; a proxy that reads labels is refused."""
    for i in range(8):
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(tmp_path / f"{i}.png")
    common = ["search", "--objective", "mae", "--data", f"unlabelled:{tmp_path}", "--space", "nb201", "--space.C", "4",
              "--space.layers", "1", "--search.epochs", "1", "--search.batch_size", "2", "--method.warmup_epochs", "0",
              "--no-progress", "--run.plots", "false", "--run.threads", "1"]
    code = main([*common, "--prune", "naswot:0.5", "--out", str(tmp_path / "ok")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "pruned vs full supernet" in out and (tmp_path / "ok" / "genotype.json").is_file()
    code = main([*common, "--prune", "snip:0.5", "--out", str(tmp_path / "snip")])
    err = capsys.readouterr().err
    assert code == 2 and "snip proxy reads labels" in err and "naswot" in err and "Traceback" not in err
    assert not (tmp_path / "snip").exists()
