"""Memory planner: the peak memory of one search step, estimated before running it.

``plan(...)`` answers "how much memory will a search step (architecture step + weight
step) need at batch B?" without allocating that step, and suggests the largest batch or
the smallest partial-channel factor K that fits a budget.

How the estimate is made (no full-size step is ever allocated):

1. **State** is counted exactly from the built objects: parameters, buffers, weight
   gradients, SGD momentum, architecture parameters and their Adam states.
2. **Activations**: the real step (the Searcher's arch step and weight step, same
   supernet, method and optimiser) runs at two tiny batches on the CPU, in a fresh
   process, under ``torch.profiler`` with memory profiling; the peak of the tensor bytes
   allocated on top of the state is read from the allocator events. Everything a step allocates
   (saved activations, gradients in flight, recomputed blocks, optimiser temporaries)
   scales linearly with the batch at a fixed input size, so the two points give
   ``activations(B) = fixed + B * per_sample``.
3. On CUDA with bf16 autocast the tiny steps run under CPU bf16 autocast, so
   activations are measured at their reduced width. The CUDA caching allocator's
   rounding and cuDNN workspaces are not modelled (a few percent).
4. On CPU what counts is the peak resident set size (RSS), and it is far more than the
   tensors: the process itself (Python, the torch libraries, oneDNN caches) plus what the
   glibc heap keeps after frees (fragmentation grows with the batch: about 4x the
   tensor bytes per sample on the fast path). So the same measuring process also runs
   the real step, unprofiled, at batches 8 and 16 and reads its peak RSS (``VmHWM``)
   after each: ``rss(B) = rss_fixed + B * rss_per_sample``. The CPU headline is that
   line; ``runtime`` in the breakdown is what it adds on top of the tensors.

``tests/search/test_planner.py`` checks the tensor estimate against the tensor peak of a real
step measured at full batch in a fresh process, and the CPU headline against the peak
RSS of a real search step in a fresh process (both within 25%).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn

from pcdarts.config import Config, build_config
from pcdarts.search.build import build_components, run_shape
from pcdarts.search.searcher import weight_optimizer, weight_step, weight_step_info
from pcdarts.utils import peak_rss_mib

MIB = 2 ** 20


@dataclass
class PlanResult:
    """A memory estimate of one search step.

    Attributes:
        peak_mib: estimated peak of the step: on CUDA the tensors, on CPU the peak RSS.
        tensor_mib: the tensor part alone (what ``torch.cuda.max_memory_allocated`` measures).
        breakdown: MiB per item: params, buffers, grads, optimizer, arch, data,
            activations, runtime (CPU: process and heap beyond the tensors; CUDA: 0).
        per_sample_mib / fixed_mib: the activation fit ``fixed + batch * per_sample``.
        rss_per_sample_mib / rss_fixed_mib: CPU only, the peak-RSS fit
            ``rss_fixed + batch * rss_per_sample`` (None on CUDA).
        budget_mib, fits: the budget asked about and whether the step fits it.
        suggest_batch: the largest batch that fits the budget (None without a budget).
        suggest_k: the smallest K dividing C that fits the budget at ``batch`` (None when
            none does, or without a budget).
    """

    space: str
    method: str
    device: str
    batch: int
    C: int
    layers: Optional[int]
    k: int
    input_size: int
    impl: str
    amp: bool
    peak_mib: float
    tensor_mib: float
    breakdown: dict[str, float]
    per_sample_mib: float
    fixed_mib: float
    rss_per_sample_mib: Optional[float] = None
    rss_fixed_mib: Optional[float] = None
    budget_mib: Optional[float] = None
    fits: Optional[bool] = None
    suggest_batch: Optional[int] = None
    suggest_k: Optional[int] = None
    notes: list[str] = field(default_factory=list)
    objective: str = "cross-entropy"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        what = self.method if self.objective == "cross-entropy" else f"{self.method}+{self.objective}"
        lines = [(f"search step: {self.space}/{what} C={self.C} layers={self.layers} K={self.k} "
                  f"batch={self.batch} {self.input_size}x{self.input_size} on {self.device} ({self.impl} path"
                  f"{', bf16' if self.amp else ''})"),
                 f"estimated peak: {self.peak_mib:.0f} MiB (tensors {self.tensor_mib:.0f} MiB)"]
        lines += [f"  {k:<12} {v:9.1f} MiB" for k, v in self.breakdown.items()]
        lines.append(f"  activations = {self.fixed_mib:.1f} + batch x {self.per_sample_mib:.2f} MiB")
        if self.rss_per_sample_mib is not None:
            lines.append(f"  peak RSS    = {self.rss_fixed_mib:.1f} + batch x {self.rss_per_sample_mib:.2f} MiB")
        if self.budget_mib is not None:
            lines.append(f"budget {self.budget_mib:.0f} MiB: {'fits' if self.fits else 'does NOT fit'}; "
                         f"largest batch {self.suggest_batch}; smallest K {self.suggest_k}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------- the measured step

def _tensors_mib(tensors: Any) -> float:
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values()) / MIB


def step_config(space: str, method: str, C: int, layers: Optional[int], k: Optional[int], impl: str,
                channel_mode: str, objective: str = "cross-entropy",
                config: Optional[dict[str, Any]] = None) -> Config:
    """The search config of a planned step: ``config`` (a run's or a preset's, as a nested dict;
    the method's and objective's own settings come from it) with the planned space fields, method
    and objective laid over it; without one, the defaults of every section."""
    d = copy.deepcopy(config) if config else {}
    if d.get("method", {}).get("name") != method:
        d["method"] = {"name": method}  # another method than the config's: its own defaults
    if d.get("objective", {}).get("name", "cross-entropy") != objective:
        d["objective"] = {"name": objective}
    d.setdefault("space", {}).update(name=space, C=C, layers=layers, k=k, impl=impl, channel_mode=channel_mode)
    return build_config(d)


class _Step:
    """The Searcher's search step (arch step + weight step) at a given batch, on CPU, with the
    components built by the one assembly (:func:`pcdarts.search.build.build_components`)."""

    def __init__(self, space: str, method: str, C: int, layers: Optional[int], k: int, input_size: int,
                 in_channels: int, num_classes: int, impl: str, channel_mode: str,
                 objective: str = "cross-entropy", config: Optional[dict[str, Any]] = None) -> None:
        from pcdarts.methods import SearchContext

        cfg = step_config(space, method, C, layers, k, impl, channel_mode, objective, config)
        parts = build_components(cfg, input_shape=(in_channels, input_size, input_size), num_classes=num_classes,
                                 device="cpu")
        self.space_obj, self.space_cfg = parts.space, cfg.space
        self.supernet, self.method, self.objective = parts.supernet, parts.method, parts.objective
        s = cfg.search
        self.grad_clip = s.grad_clip
        self.weight_params = parts.weight_params
        self.optimizer = weight_optimizer(self.weight_params, s)
        self.autocast: Any = contextlib.nullcontext
        self.ctx = SearchContext(supernet=self.supernet, objective=self.objective, weight_params=self.weight_params,
                                 weight_step_info=lambda: weight_step_info(self.optimizer, self.weight_params),
                                 autocast=lambda: self.autocast())
        self.input_size, self.in_channels, self.num_classes = input_size, in_channels, num_classes
        self.supernet.train()

    def batch(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, self.in_channels, self.input_size, self.input_size, generator=g)
        return x, torch.randint(0, self.num_classes, (n,), generator=g)

    def run(self, n: int) -> None:
        """One search step exactly as ``Searcher.search_step`` does it (arch-first order; a
        method that owns its step runs its own, extra models and per-level updates included)."""
        train, arch = self.batch(n, 0), self.batch(n, 1)
        if self.method.owns_step:
            batches = {"train": train, "arch": arch}
            self.method.step(self.ctx, {name: batches[name] for name in self.method.data_streams},
                             lambda b: weight_step(self.method, self.optimizer, b, self.ctx, grad_clip=self.grad_clip))
            return
        if self.method.has_arch:
            self.method.arch_step(self.ctx, train, arch)
        weight_step(self.method, self.optimizer, train, self.ctx, grad_clip=self.grad_clip)

    def state_mib(self) -> dict[str, float]:
        """Tensors alive between steps, per kind (MiB)."""
        net, opt = self.supernet, self.optimizer
        # the method's state: architecture tensors, every module it holds (a student, heads) and
        # the state of every optimiser it holds
        arch = list(self.method.arch.parameters()) + list(self.method.arch.buffers())
        for value in vars(self.method).values():
            if isinstance(value, nn.Module) and value is not self.method.arch:
                arch += list(value.parameters()) + list(value.buffers())
                arch += [p.grad for p in value.parameters() if p.grad is not None]
            elif isinstance(value, torch.optim.Optimizer):
                arch += [v for st in value.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
        weights = list(net.parameters()) + list(self.objective.parameters())
        return {
            "params": _tensors_mib(weights),
            "buffers": _tensors_mib(list(net.buffers()) + list(self.objective.buffers())),
            "grads": _tensors_mib(p.grad for p in weights if p.grad is not None),
            "optimizer": _tensors_mib(v for st in opt.state.values() for v in st.values()
                                      if isinstance(v, torch.Tensor)),
            "arch": _tensors_mib(arch),
        }

    def peak_above_state_mib(self, n: int) -> float:
        """Peak tensor bytes a step at batch ``n`` allocates on top of the state (profiled)."""
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.run(n)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "trace.json")
            prof.export_chrome_trace(path)
            with open(path) as f:
                events = json.load(f)["traceEvents"]
        totals = [e["args"].get("Total Allocated", 0) for e in events
                  if e.get("name") == "[memory]" and str(e["args"].get("Device Type", 0)) in ("0", "cpu")]
        return max(totals, default=0) / MIB


def measure_activations(step: _Step, batches: tuple[int, int] = (2, 4)) -> tuple[float, float]:
    """(fixed, per-sample) MiB of a step's transient tensors, from two small profiled steps."""
    for b in batches:  # warm-up: optimiser states exist, caches are built, grads are at steady state
        step.run(b)
    step.peak_above_state_mib(batches[0])  # the first profiled step reads low (profiler start-up)
    a = step.peak_above_state_mib(batches[0])
    b = step.peak_above_state_mib(batches[1])
    per = max((b - a) / (batches[1] - batches[0]), 0.0)
    return max(a - per * batches[0], 0.0), per


RSS_BATCHES = (8, 16)


def measure_rss(step: _Step, batches: tuple[int, int] = RSS_BATCHES, repeats: int = 2) -> tuple[float, float]:
    """(fixed, per-sample) MiB of the peak RSS of real steps at two batches (unprofiled)."""
    peaks = []
    for b in batches:
        for _ in range(repeats):
            step.run(b)
        peaks.append(peak_rss_mib())
    per = max((peaks[1] - peaks[0]) / (batches[1] - batches[0]), 0.0)
    return peaks[0] - per * batches[0], per


# ---------------------------------------------------------------- API

def plan(space: str = "darts", method: str = "pc-darts", batch: int = 64, C: int = 16, layers: Optional[int] = None,
         k: Optional[int] = None, device: str = "cpu", input_size: int = 32, in_channels: int = 3,
         num_classes: int = 10, budget_mib: Optional[float] = None, *, impl: str = "auto", amp: bool = True,
         channel_mode: str = "first+shuffle", data_mib: float = 0.0, suggest: bool = True,
         objective: str = "cross-entropy", config: Optional[Config] = None) -> PlanResult:
    """Estimate the peak memory of one search step (see the module docstring).

    ``impl="auto"`` plans for the path a search on ``device`` uses (fast on CPU, reference on CUDA).

    Args:
        space, method, C, layers, k: as in the config (k None: the method's default K).
        batch: the batch of each split. device: ``cpu`` or ``cuda`` (what is planned for;
            the measurement itself always runs small steps on the CPU).
        input_size, in_channels, num_classes: the data.
        budget_mib: if given, whether the step fits, the largest batch and the smallest K.
        impl: ``fast`` or ``reference`` supernet. amp: bf16 autocast (CUDA only).
        channel_mode: partial-channel mode. data_mib: the dataset resident on the device
            (the device loader keeps it there), added to the estimate.
        suggest: compute ``suggest_k`` (one more measurement per candidate K).
        objective: the search objective (``mae``: its decoder's weights, gradients, momenta and
            activations are planned too).
        config: a whole search config (a run's, see :func:`plan_run`): the method's and the
            objective's own settings and the search section come from it (None: their defaults);
            the arguments above still name the space fields, method and objective planned.
    """
    from pcdarts.config import resolve_impl
    impl = resolve_impl(impl, torch.device(device).type)
    from pcdarts.spaces import get_space

    base = config.to_dict() if config is not None else None
    extra: dict[str, Any] = {"config": base} if base else {}
    if k is None:  # the K the config puts in force (the method's default, with its real settings)
        k = step_config(space, method, C, layers, None, impl, channel_mode, objective, base).k
    if layers is None:  # the space's default (SpaceConfig.layers=None)
        layers = get_space(space).default_layers
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    cuda = str(device).startswith("cuda")
    amp = bool(amp and cuda)
    m = _measure(space, method, C, layers, k, input_size, in_channels, num_classes, impl, amp, channel_mode,
                 not cuda, objective, **extra)
    breakdown = dict(m.state)
    breakdown["data"] = float(data_mib)
    breakdown["activations"] = m.fixed + batch * m.per
    tensor = sum(breakdown.values())
    peak = m.peak(batch, cuda) + data_mib
    breakdown["runtime"] = peak - tensor  # CUDA: 0 (the allocator counts no process, no CUDA context)
    if cuda:
        notes = ["CUDA: allocator rounding and cuDNN workspaces are not modelled"]
    else:
        notes = ["CPU: the peak is the process's peak RSS (tensors, libraries, glibc heap), fitted from real "
                 f"steps at batches {RSS_BATCHES[0]} and {RSS_BATCHES[1]}; the tensors alone are tensor_mib"]
    if config is not None and config.search.prune:
        notes.append(f"search.prune={config.search.prune}: planned on the whole space (the pruned supernet "
                     "needs less)")
    res = PlanResult(space, method, str(device), batch, C, layers, k, input_size, impl, amp,
                     peak_mib=peak, tensor_mib=tensor, breakdown=breakdown, per_sample_mib=m.per,
                     fixed_mib=m.fixed, rss_per_sample_mib=None if cuda else m.rss_per,
                     rss_fixed_mib=None if cuda else m.rss_fixed, notes=notes, objective=objective)
    if budget_mib is not None:
        res.budget_mib = float(budget_mib)
        res.fits = res.peak_mib <= budget_mib
        res.suggest_batch = m.largest_batch(budget_mib - data_mib, cuda)
        if suggest:
            res.suggest_k = _smallest_k(space, method, batch, C, layers, input_size, in_channels, num_classes,
                                        impl, amp, channel_mode, cuda, budget_mib - data_mib, {k: m}, objective,
                                        base)
    return res


def plan_run(run_dir: Any, *, batch: Optional[int] = None, device: str = "cpu", budget_mib: Optional[float] = None,
             amp: Optional[bool] = None, data_mib: float = 0.0, suggest: bool = True) -> PlanResult:
    """:func:`plan` of a search run directory's step: its config (space, method and objective with
    their own settings, ``search.batch_size`` unless ``batch`` is given, ``search.amp`` unless
    ``amp`` is) and its data shape (from its manifest), as :func:`pcdarts.search.build.load_run`
    reads them."""
    from pcdarts.runs import check_resumable
    from pcdarts.config import load_config_file
    path = check_resumable(run_dir, "search", "pcdarts plan --run")
    cfg = load_config_file(path / "config.yaml")
    (in_channels, side, _), num_classes = run_shape(path, None, cfg)
    sp = cfg.space
    batch = cfg.search.batch_size if batch is None else batch
    return plan(sp.name, cfg.method_name, batch, sp.C, sp.layers, sp.k, device, side, in_channels, num_classes,
                budget_mib, impl=sp.impl, amp=cfg.search.amp if amp is None else amp, channel_mode=sp.channel_mode,
                data_mib=data_mib, suggest=suggest, objective=cfg.objective_name, config=cfg)


@dataclass
class _Measured:
    """What one measuring process reports, in MiB: the tensors alive between steps per
    kind, the activation fit ``fixed + B * per`` and (CPU) the peak-RSS fit."""

    state: dict[str, float]
    fixed: float
    per: float
    rss_fixed: float = 0.0
    rss_per: float = 0.0

    def _line(self, cuda: bool) -> tuple[float, float]:
        tensors = (sum(self.state.values()) + self.fixed, self.per)
        if cuda:
            return tensors
        return max(self.rss_fixed, tensors[0]), max(self.rss_per, tensors[1])  # RSS holds the tensors

    def peak(self, batch: int, cuda: bool) -> float:
        """The headline peak at ``batch``, without data kept on the device."""
        fixed, per = self._line(cuda)
        return fixed + batch * per

    def largest_batch(self, budget: float, cuda: bool) -> Optional[int]:
        fixed, per = self._line(cuda)
        return max(math.floor((budget - fixed) / per), 0) if per > 0 else None


def _measure(space: str, method: str, C: int, layers: Optional[int], k: int, input_size: int, in_channels: int,
             num_classes: int, impl: str, amp: bool, channel_mode: str, rss: bool,
             objective: str = "cross-entropy", config: Optional[dict[str, Any]] = None) -> _Measured:
    """The measurement (see :class:`_Measured`; the peak-RSS fit only with ``rss``), made
    in a fresh Python process so that nothing this process did (caches, earlier
    profiling, other models) leaks into it."""
    args = dict(space=space, method=method, C=C, layers=layers, k=k, input_size=input_size, in_channels=in_channels,
                num_classes=num_classes, impl=impl, amp=amp, channel_mode=channel_mode, rss=rss, objective=objective,
                config=config)
    code = ("import sys, json; from pcdarts.search.planner import _measure_local; "
            "print(json.dumps(_measure_local(**json.loads(sys.argv[1]))))")
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=env,
                         timeout=3600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"planner measurement failed:\n{out.stderr.strip()[-2000:]}")
    return _Measured(**json.loads(out.stdout.strip().splitlines()[-1]))


def _measure_local(space: str, method: str, C: int, layers: Optional[int], k: int, input_size: int,
                   in_channels: int, num_classes: int, impl: str, amp: bool, channel_mode: str,
                   rss: bool, objective: str = "cross-entropy", config: Optional[dict[str, Any]] = None
                   ) -> dict[str, Any]:
    """The measurement itself (see :func:`_measure`), in this process."""
    # one thread: the tensors a step allocates do not depend on it, and a planner must not
    # fight a busy machine (OpenMP threads wait for each other when cores are shared)
    torch.set_num_threads(1)
    step = _Step(space, method, C, layers, k, input_size, in_channels, num_classes, impl, channel_mode, objective,
                 config)
    if amp:
        step.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    rss_fixed, rss_per = measure_rss(step) if rss else (0.0, 0.0)  # first: before any profiling
    fixed, per = measure_activations(step)
    return asdict(_Measured(step.state_mib(), fixed, per, rss_fixed, rss_per))


def _smallest_k(space: str, method: str, batch: int, C: int, layers: Optional[int], input_size: int,
                in_channels: int, num_classes: int, impl: str, amp: bool, channel_mode: str, cuda: bool,
                budget: float, measured: dict[int, _Measured], objective: str = "cross-entropy",
                config: Optional[dict[str, Any]] = None) -> Optional[int]:
    """The smallest K dividing C whose step fits ``budget``; ``measured``: the Ks already measured."""
    for k in [d for d in range(1, C + 1) if C % d == 0]:
        m = measured.get(k)
        if m is None:
            try:
                m = _measure(space, method, C, layers, k, input_size, in_channels, num_classes, impl, amp,
                             channel_mode, not cuda, objective, **({"config": config} if config else {}))
            except (ValueError, RuntimeError):  # K not usable with this space (e.g. odd C/K)
                continue
        if m.peak(batch, cuda) <= budget:
            return k
    return None


__all__ = ["PlanResult", "plan", "plan_run", "measure_activations", "step_config"]
