"""Zero-cost proxies: rank a network at initialisation from one minibatch (docs/methods.md, "Zero-cost proxies").

Each proxy is a function ``proxy(net, batch, *, seed=0) -> float`` registered in
:data:`pcdarts.registry.PROXIES`. ``net`` is any ``nn.Module`` whose forward takes an
image batch and returns logits or ``(logits, aux)`` (the evaluation networks of
:mod:`pcdarts.nn.networks`, or a supernet at a fixed mixing: :class:`pcdarts.search.prune.SupernetAt`);
``batch`` is ``(images, labels)``. Higher always means "predicted better". Every proxy
leaves the network as it found it (parameter values and dtypes, buffers such as BN running
statistics, train/eval flags, ``requires_grad``; ``.grad`` is never written: gradients come
from ``torch.autograd.grad``), and runs under a forked RNG seeded with ``seed``, so equal
seeds give equal scores and the caller's random streams do not move.

What each computes, as the official code does (checked by running it on identical inputs):

* ``naswot`` (Mellor et al., ICML 2021): the network in **train** mode, one forward pass; the
  input of every ``nn.ReLU`` module (its pre-activation) is binarised per sample,
  ``c = 1[x > 0]``; ``K = sum over ReLUs of C C^T + (1 - C)(1 - C)^T`` in float64, i.e.
  ``K[i, j] = N_A - hamming(c_i, c_j)`` (:func:`naswot_kernel`); the score is ``log|det K|``
  (``slogdet``, sign dropped; a singular K gives -inf). K is not normalised: more ReLU units,
  larger scores (NASWOT#20). Only ReLUs that the backward of the first output (the logits)
  reaches count, as the official code's hooks (a discarded branch, e.g. the auxiliary head of
  an evaluation network, adds nothing); no ReLU reached gives K = 0, so -inf.
* ``synflow`` (Tanaka et al.; Abdelfattah et al., ICLR 2021): every parameter (and float
  buffer) replaced by its absolute value, BatchNorm removed (identity), float64, one all-ones
  image; ``R = sum of the logits``; ``sum over Conv2d/Linear weights of |W * dR/dW|``. Returned
  as its **natural log** (the raw values span 1e32-1e61, zero-cost-nas#23; ranks are unchanged).
* ``snip``: ``sum |W * dL/dW|`` and ``grad_norm``: the **sum of per-layer** norms
  ``sum_l ||dL/dW_l||_F``, both over Conv2d/Linear weights with L the mean cross-entropy of
  the labelled batch and BN in whatever mode the network is in (the authors' scripts: train).
* ``jacob_cov``: the per-sample gradients of the summed logits w.r.t. the input, their
  correlation matrix's eigenvalues ``l``: ``-sum(log(l + 1e-5) + 1 / (l + 1e-5))``; -inf when
  undefined (a constant gradient row, e.g. a cell that does not connect input to output).
* ``params`` and ``macs``: parameter count and multiply-adds of one image
  (:func:`pcdarts.nn.counting.count_params` / ``count_macs``), the baselines every
  proxy must beat.

Only ``nn.Conv2d`` and ``nn.Linear`` weights are scored; a spectrally normalised conv
(a parametrised weight, MSR-DARTS) is scored through its raw weight.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from pcdarts.nn.counting import count_macs, count_params
from pcdarts.registry import PROXIES

Batch = tuple[torch.Tensor, torch.Tensor]
Proxy = Callable[..., float]
JACOB_EPS = 1e-5  # the official jacob_cov's k


def logits_of(out: Any) -> torch.Tensor:
    """The logits of a forward's output: ``logits`` or ``(logits, aux)``."""
    return out[0] if isinstance(out, (tuple, list)) else out


def scored_weights(net: nn.Module) -> list[torch.Tensor]:
    """The leaf weight of every Conv2d and Linear (the raw one under a parametrisation)."""
    out = []
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if parametrize.is_parametrized(m, "weight"):
                out.append(m.parametrizations.weight.original)
            else:
                out.append(m.weight)
    return out


@contextlib.contextmanager
def preserved(net: nn.Module, seed: int, device: torch.device) -> Iterator[None]:
    """Run a proxy on ``net`` and give it back untouched: parameter values and dtypes,
    buffers, train flags and ``requires_grad`` are restored; inside, the RNG is forked
    and seeded with ``seed`` (the caller's streams do not move)."""
    modules = list(net.modules())  # one walk of the module tree (a supernet's is deep)
    seen: set[int] = set()
    params = []
    for m in modules:
        for p in m._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                params.append((p, p.data.clone(), p.requires_grad))
    buffers = [(m, name, b, b.clone()) for m in modules for name, b in m._buffers.items() if b is not None]
    modes = [(m, m.training) for m in modules]
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
    finally:
        for p, data, flag in params:
            p.data = data
            p.requires_grad_(flag)
        for m, name, b, saved in buffers:
            b.copy_(saved)
            m._buffers[name] = b  # net.double() swaps buffer objects; put the originals back
        for m, mode in modes:
            m.training = mode


def _tracked_weights(net: nn.Module) -> list[torch.Tensor]:
    """The scored weights, with ``requires_grad`` on (a frozen layer is scored too; the
    flags are restored by :func:`preserved`). Call before the forward pass."""
    weights = scored_weights(net)
    for w in weights:
        w.requires_grad_(True)
    return weights


def _input_grads(weights: list[torch.Tensor], loss: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(weights, d loss / d weight) over the weights the loss depends on."""
    grads = torch.autograd.grad(loss, weights, allow_unused=True)
    used = [(w, g) for w, g in zip(weights, grads) if g is not None]
    return [w for w, _ in used], [g for _, g in used]


def _batch_device(batch: Batch) -> torch.device:
    return batch[0].device


# ---------------------------------------------------------------- NASWOT

def naswot_kernel(codes: Sequence[torch.Tensor]) -> torch.Tensor:
    """``K = sum_l C_l C_l^T + (1 - C_l)(1 - C_l)^T`` (float64) of binary codes ``C_l`` [N, units_l],
    computed as ``2 C C^T - s 1^T - 1 s^T + units`` (s = the row sums: one matmul per layer;
    its integer entries are exact in float32 up to 2^24 units per layer)."""
    K = None
    for c in codes:
        c = c.reshape(c.shape[0], -1)
        term = _code_kernel(c)
        K = term if K is None else K + term
    if K is None:
        raise ValueError("naswot_kernel needs at least one layer of codes")
    return K


def _code_kernel(c: torch.Tensor) -> torch.Tensor:
    units = c.shape[1]
    exact = torch.float32 if units < 2 ** 24 else torch.float64
    c = c.to(exact)
    s = c.sum(1, keepdim=True).double()
    return 2.0 * (c @ c.T).double() - s - s.T + float(units)


def naswot_score(K: torch.Tensor) -> float:
    """``log|det K|`` by slogdet (the sign dropped; -inf for a singular K)."""
    return float(torch.linalg.slogdet(K.double())[1])


def _drop(t: Any) -> None:
    """A saved-tensor hook that keeps nothing (the graph is never run backward)."""
    return None


def _reached_nodes(root: Any) -> set[int]:
    """Ids of the autograd nodes a backward from ``root`` (a ``grad_fn``) runs: every node
    reachable through ``next_functions`` (the graph is alive while the caller holds it)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        stack.extend(f for f, _ in fn.next_functions)
    return seen


@PROXIES.register("naswot", description="NASWOT: log|det K_H| of the ReLU codes of one batch (train mode)")
def naswot(net: nn.Module, batch: Batch, *, seed: int = 0) -> float:
    """NASWOT score of ``net`` on ``batch`` (see the module docstring).

    As the official ``search.py``, a ReLU module counts only when the backward of the first
    output reaches it: one forward with the graph recorded (the input requires grad), then
    the ReLUs whose output node is reachable from the logits' ``grad_fn`` add every code they
    produced in that forward; a branch whose output is discarded (e.g. an auxiliary head)
    adds nothing. No gradient is computed: reaching a node is read off the graph."""
    x = batch[0]
    n = x.shape[0]
    calls: list[tuple[nn.Module, torch.Tensor, Any]] = []  # (module, its K term, its output's grad_fn)

    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        pre = args[0].detach()  # an in-place ReLU hands its output here: the same code, 1[x > 0]
        if pre.shape[0] != n:
            return
        calls.append((module, _code_kernel(pre.reshape(n, -1) > 0), getattr(out, "grad_fn", None)))

    with preserved(net, seed, x.device):
        net.train()
        handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.ReLU)]
        try:
            # the graph is only walked, never run backward: nothing it would save is kept (the
            # memory of a no-grad forward, not of a training step)
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_drop, _drop):
                xg = x.detach().clone().requires_grad_(True)
                root = logits_of(net(xg.clone())).grad_fn  # a non-leaf input: an in-place first op is legal
                reached = _reached_nodes(root)
        finally:
            for h in handles:
                h.remove()
    if not calls:
        raise ValueError("naswot: no nn.ReLU module ran in the forward pass (functional ReLUs cannot be "
                         "hooked; a fast supernet must run its reference path: pcdarts.search.prune.SupernetAt)")
    counted = {id(m) for m, _, fn in calls if fn is not None and id(fn) in reached}
    K = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for m, term, _ in calls:
        if id(m) in counted:  # the official flag is per module: all its calls count once one is reached
            K = K + term
    return naswot_score(K)


# ---------------------------------------------------------------- synflow

def _identity(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return x


@PROXIES.register("synflow", description="log synflow: sum |W dR/dW|, |params|, no BN, float64, one all-ones image")
def synflow(net: nn.Module, batch: Batch, *, seed: int = 0) -> float:
    """Natural log of the synflow sum (see the module docstring)."""
    x = batch[0]
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with preserved(net, seed, x.device):
        net.double()
        with torch.no_grad():
            for p in net.parameters():
                p.data.abs_()
            for b in net.buffers():
                if b.is_floating_point():
                    b.abs_()
        for m in bns:
            m.forward = _identity  # BatchNorm removed: an instance attribute shadows the method
        try:
            ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device)
            tracked = _tracked_weights(net)
            R = logits_of(net(ones)).sum()
            weights, grads = _input_grads(tracked, R)
            total = sum(float((w.detach() * g).abs().sum()) for w, g in zip(weights, grads))
        finally:
            for m in bns:
                del m.forward
    return math.log(total) if total > 0 else float("-inf")


# ---------------------------------------------------------------- snip, grad_norm
# (the two proxies that read labels: ``needs_labels`` lets zero-shot pruning refuse them on an
# unlabelled set in one line)

def _loss_grads(net: nn.Module, batch: Batch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    x, y = batch
    tracked = _tracked_weights(net)
    loss = F.cross_entropy(logits_of(net(x)), y)
    return _input_grads(tracked, loss)


@PROXIES.register("snip", description="snip: sum |W dL/dW| over conv/linear weights (cross-entropy, one batch)")
def snip(net: nn.Module, batch: Batch, *, seed: int = 0) -> float:
    with preserved(net, seed, _batch_device(batch)):
        weights, grads = _loss_grads(net, batch)
        return sum(float((w.detach() * g).abs().sum()) for w, g in zip(weights, grads))


@PROXIES.register("grad_norm", description="grad_norm: sum over layers of ||dL/dW_l|| (cross-entropy, one batch)")
def grad_norm(net: nn.Module, batch: Batch, *, seed: int = 0) -> float:
    with preserved(net, seed, _batch_device(batch)):
        _, grads = _loss_grads(net, batch)
        return sum(float(g.norm()) for g in grads)


snip.needs_labels = True  # type: ignore[attr-defined]
grad_norm.needs_labels = True  # type: ignore[attr-defined]


# ---------------------------------------------------------------- jacob_cov

def jacob_cov_score(jacobian: torch.Tensor) -> float:
    """``-sum(log(l + k) + 1/(l + k))`` over the eigenvalues l of the correlation matrix of the
    rows of ``jacobian`` [N, D] (k = 1e-5); -inf when undefined. N >= 2: a correlation between
    images needs two of them (ValueError otherwise)."""
    if jacobian.shape[0] < jacob_cov.min_images:
        raise ValueError(f"jacob_cov correlates the input gradients of the batch's images: it needs at least "
                         f"{jacob_cov.min_images} images, got {jacobian.shape[0]}")
    corr = torch.corrcoef(jacobian.reshape(jacobian.shape[0], -1).double())
    if not bool(torch.isfinite(corr).all()):
        return float("-inf")
    v = torch.linalg.eigvalsh(corr)
    score = float(-(torch.log(v + JACOB_EPS) + 1.0 / (v + JACOB_EPS)).sum())
    return score if math.isfinite(score) else float("-inf")


@PROXIES.register("jacob_cov", description="jacob_cov: eigenvalues of the correlation of per-sample input gradients")
def jacob_cov(net: nn.Module, batch: Batch, *, seed: int = 0) -> float:
    x = batch[0]
    with preserved(net, seed, x.device):
        xg = x.detach().clone().requires_grad_(True)
        out = logits_of(net(xg))
        (g,) = torch.autograd.grad(out.sum(), xg, allow_unused=True)
        if g is None:  # the output does not depend on the input (no path through the cell)
            return float("-inf")
        return jacob_cov_score(g)


# ---------------------------------------------------------------- MeCo, ZiCo

def meco_of_features(fea: torch.Tensor) -> float:
    """The MeCo term of one feature map ``fea`` [C, ...] of one image: the smallest eigenvalue
    of the C x C correlation matrix of its channels (each channel's values as one variable;
    undefined entries, e.g. of a constant channel, set to 0), in float64. NaN when there is no
    matrix to speak of (C < 2)."""
    f = fea.detach().reshape(fea.shape[0], -1).double()
    if f.shape[0] < 2:
        return float("nan")
    if f.shape[1] < 2:  # one value per channel: every correlation undefined, the matrix 0 (as the authors')
        return 0.0
    corr = torch.corrcoef(f)
    corr = torch.where(torch.isfinite(corr), corr, torch.zeros_like(corr))
    return float(torch.linalg.eigvalsh(corr)[0])


@PROXIES.register("meco", description="MeCo: sum over modules of the min eigenvalue of the channel correlation "
                                      "of one image's feature map (label-free)")
def meco(net: nn.Module, batch: Batch, *, seed: int = 0) -> float:
    """MeCo (Jiang et al., NeurIPS 2023), as the authors' NAS-Bench-201 script
    (``HamsterMimi/MeCo``, ``correlation/NAS_Bench_201.py``) computes it: one forward pass of
    **one image** (the batch's first) with the network in train mode; for the output of every
    module (containers included, as the authors hook ``named_modules()``) the feature map of
    that image, [C, H, W] -> C variables, gives :func:`meco_of_features`; the score is the sum
    of the finite terms. A module whose output is a tuple contributes through its first tensor
    (the authors' hook would index the tuple instead and fail on it). A BatchNorm that sees one
    value per channel (the DARTS auxiliary head's, at one image) uses its running statistics
    (:func:`running_stats_where_one_value_per_channel`); NB201 networks have none such."""
    x = batch[0][:1]
    terms: list[float] = []

    def hook(module: nn.Module, args: Any, out: Any) -> None:
        t = out
        while isinstance(t, (tuple, list)) and t:
            t = t[0]
        if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[0] == 1:
            terms.append(meco_of_features(t[0]))

    with preserved(net, seed, x.device):
        net.train()
        handles = [m.register_forward_hook(hook) for m in net.modules()]
        try:
            with torch.no_grad(), running_stats_where_one_value_per_channel(net):
                net(x)
        finally:
            for h in handles:
                h.remove()
    return float(sum(v for v in terms if math.isfinite(v)))


@contextlib.contextmanager
def running_stats_where_one_value_per_channel(net: nn.Module) -> Iterator[None]:
    """Inside, a BatchNorm in train mode whose input holds one value per channel (one image
    through a 1x1 map or a linear layer, e.g. the DARTS auxiliary head under MeCo's single
    image) normalises with its running statistics for that call instead of failing on
    undefined batch statistics; every other BatchNorm keeps batch statistics. The train flags
    are restored after each call and on exit."""
    switched: list[nn.Module] = []

    def before(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if module.training and x.dim() >= 2 and x.numel() == x.shape[1] and module.running_mean is not None:
            module.training = False
            switched.append(module)

    def after(module: nn.Module, args: Any, out: Any) -> None:
        if switched and switched[-1] is module:
            switched.pop().training = True

    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [h for m in bns for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m in switched:
            m.training = True


def zico_of_grads(grads: Sequence[Sequence[torch.Tensor]]) -> float:
    """ZiCo from per-layer gradient recordings: ``grads[l]`` holds layer l's gradient at each
    recording (same shape). Per layer, over the entries whose standard deviation across the
    recordings (population, ddof 0) is non-zero: ``log(sum(mean|g| / std(g)))``, a layer whose
    sum is 0 left out; the score is the sum over layers."""
    total = 0.0
    for layer in grads:
        g = torch.stack([t.detach().reshape(-1).double() for t in layer])
        std = g.std(0, unbiased=False)
        keep = std != 0
        s = float((g.abs().mean(0)[keep] / std[keep]).sum())
        if s != 0:
            total += math.log(s)
    return total


@PROXIES.register("zico", description="ZiCo: sum over layers of log sum mean|g|/std(g), gradients of two half-batches")
def zico(net: nn.Module, batch: Batch, *, seed: int = 0) -> float:
    """ZiCo (Li et al., ICLR 2023), as the official code (``SLDGroup/ZiCo``,
    ``ZeroShotProxy/compute_zico.py``, and its NAS-Bench-201 copy that splits one batch in two):
    the network in train mode, the batch split into two halves, the cross-entropy of each half
    backpropagated **without clearing the gradients in between**, so the two recordings of a
    layer are g1 and g1 + g2 (the official code's accumulation, kept); over Conv2d/Linear
    weights, :func:`zico_of_grads`. Needs labels and at least 2 images."""
    x, y = batch
    if x.shape[0] < 2:
        raise ValueError("zico needs a batch of at least 2 images (it splits the batch in two halves)")
    half = x.shape[0] // 2
    with preserved(net, seed, x.device):
        net.train()
        tracked = _tracked_weights(net)
        recs: list[list[Optional[torch.Tensor]]] = [[] for _ in tracked]
        acc: list[Optional[torch.Tensor]] = [None] * len(tracked)
        for lo, hi in ((0, half), (half, x.shape[0])):
            loss = F.cross_entropy(logits_of(net(x[lo:hi])), y[lo:hi])
            gs = torch.autograd.grad(loss, tracked, allow_unused=True)
            for i, g in enumerate(gs):
                if g is not None:
                    acc[i] = g if acc[i] is None else acc[i] + g
                recs[i].append(acc[i])
        layers = [[t for t in r] for r in recs if all(t is not None for t in r)]
        return zico_of_grads(layers)  # type: ignore[arg-type]


zico.needs_labels = True  # type: ignore[attr-defined]


jacob_cov.min_images = 2  # type: ignore[attr-defined]  (the smallest batch it is defined on; default 1)
zico.min_images = 2  # type: ignore[attr-defined]  (two half-batches)


# ---------------------------------------------------------------- baselines

@PROXIES.register("params", description="number of parameters (the baseline)")
def params(net: nn.Module, batch: Batch, *, seed: int = 0) -> float:
    return float(count_params(net))


@PROXIES.register("macs", description="multiply-adds of one image, conv + linear (the baseline)")
def macs(net: nn.Module, batch: Batch, *, seed: int = 0) -> float:
    x = batch[0]
    with preserved(net, seed, x.device):
        return float(count_macs(net, tuple(int(s) for s in x.shape[1:])))


def _snip_and_grad_norm(net: nn.Module, batch: Batch, seed: int) -> tuple[float, float]:
    """snip and grad_norm from one backward pass (they differentiate the same loss)."""
    with preserved(net, seed, _batch_device(batch)):
        weights, grads = _loss_grads(net, batch)
        return (sum(float((w.detach() * g).abs().sum()) for w, g in zip(weights, grads)),
                sum(float(g.norm()) for g in grads))


def score(net: nn.Module, batch: Batch, proxies: Sequence[str], *, seed: int = 0) -> dict[str, float]:
    """Every named proxy of ``net`` on ``batch`` (unknown names list the registered ones), in
    the order given; snip and grad_norm share one backward pass when both are asked for."""
    funcs = {name: PROXIES.get(name) for name in proxies}
    shared: dict[str, float] = {}
    if funcs.get("snip") is snip and funcs.get("grad_norm") is grad_norm:
        shared["snip"], shared["grad_norm"] = _snip_and_grad_norm(net, batch, seed)
    return {name: shared[name] if name in shared else float(fn(net, batch, seed=seed)) for name, fn in funcs.items()}


__all__ = ["naswot", "synflow", "snip", "grad_norm", "jacob_cov", "meco", "zico", "params", "macs", "score",
           "meco_of_features", "zico_of_grads", "naswot_kernel",
           "naswot_score", "jacob_cov_score", "scored_weights", "logits_of", "preserved"]
