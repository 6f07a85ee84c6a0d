"""MSR-DARTS, minimum stable rank DARTS (Machida, Uto, Shinoda & Suzuki; docs/methods.md, "MSR-DARTS").

No architecture parameters and no architecture step: the op of an edge is *selected* by
the stable rank of its trained conv (:mod:`pcdarts.scorers.stable_rank`), the smaller the
better. As in the official code (``mtaecchhi/msrdarts``):

* the candidates are the parametric ops only (DARTS: ``sep_conv_3x3/5x5``,
  ``dil_conv_3x3/5x5``; NB201: ``nor_conv_1x1/3x3``); the others are removed from the
  supernet before the optimiser is built (:meth:`MSRDarts.prepare_supernet`), so they
  are never allocated for training, and derivation never sees them (masked);
* every conv inside a candidate op is spectrally normalised, ``W / (sigma(W) / coeff + eps)``
  with coefficient 1 and 5 power iterations per training forward (:class:`SpectralNormBank`);
* each cell mixes its edges with its own ``softmax(-srank)`` over the candidates,
  recomputed from the current weights at the start of every epoch and held constant
  (no gradient) through it;
* only the weights train (the Searcher's SGD on the weight split, ``train_portion`` 0.8);
  the held-out 20 % is only evaluated (``Searcher.evaluate``), never trained on;
* the genotype applies the space's rule to ``-mean srank`` over the cells of each type:
  per node the 2 inputs with the smallest ``min_o srank``, then ``argmin_o`` on each.

Paper-versus-code choices are config fields (:class:`MSRDartsConfig`); the defaults are the code's.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from pcdarts.errors import ConfigError
from pcdarts.methods.base import Method, SearchContext
from pcdarts.nn.edges import Mixing
from pcdarts.ranges import Count, EpochIndex, Positive, Rate
from pcdarts.registry import METHODS
from pcdarts.scorers import stable_rank as sr

RESOLUTIONS = ("cell", "op")


@dataclass(frozen=True)
class MSRDartsConfig:
    """MSR-DARTS (docs/methods.md, "MSR-DARTS"; defaults: the official code).

    Attributes:
        ops: the candidate primitives, comma-separated; empty = every primitive of the space
            whose name contains ``conv`` (DARTS: the 4 sep/dil convs; NB201: nor_conv_1x1/3x3).
        srank_mode: ``operator`` (the conv as the circular-boundary operator at its
            resolution, Sedghi et al.; the code) or ``reshape`` (C_out x C_in*k*k; the paper's wording).
        resolution: the H x W each conv is measured (stable rank) and normalised (spectral
            norm) at. ``cell`` (the code): the cell's input resolution, halved after the stride of
            a stride-2 edge, so in a reduction cell the ops on edges leaving an intermediate node
            count at twice their real resolution (4x the stable rank of their 1x1 conv: the
            published reduction cell takes only inputs 0 and 1). ``op``: the resolution each conv really sees.
        spectral_norm: spectrally normalise every conv of the candidate ops.
        sn_coeff: the target spectral norm (1).
        sn_iterations: power iterations per training forward (5).
        sn_eps: added to sigma / coeff before dividing (1e-5 as the code's conv variant).
        sn_redraw: grouped (depthwise) convs restart their power iteration from a random
            vector at every training forward (the code; drawn from the run's architecture
            generator); False keeps their vectors like the other convs.
        per_cell: also derive one cell per supernet cell from its own stable ranks
            (``cell_genotypes`` in history.jsonl; the paper's "per-cell architectures"); the genotype
            itself stays the one of the mean matrix per cell type.
        warmup_epochs: accepted so that a config shared by all methods validates; MSR-DARTS
            has no architecture to warm up (must be 0).
    """

    ops: str = ""
    srank_mode: str = "operator"
    resolution: str = "cell"
    spectral_norm: bool = True
    sn_coeff: Positive = 1.0
    sn_iterations: Count = 5
    sn_eps: Rate = 1e-5
    sn_redraw: bool = True
    per_cell: bool = False
    warmup_epochs: EpochIndex = 0

    def __post_init__(self) -> None:
        if self.srank_mode not in sr.MODES:
            raise ConfigError(f"method.srank_mode must be one of {', '.join(sr.MODES)}, got {self.srank_mode!r}")
        if self.resolution not in RESOLUTIONS:
            raise ConfigError(f"method.resolution must be one of {', '.join(RESOLUTIONS)}, got {self.resolution!r}")
        if self.warmup_epochs:
            raise ConfigError(f"method.warmup_epochs must be 0 for msr-darts (it has no architecture parameters), "
                              f"got {self.warmup_epochs}")


def candidate_names(cfg: MSRDartsConfig, primitives: Sequence[str]) -> tuple[str, ...]:
    """The candidate primitives: those ``cfg.ops`` names, or those whose name contains ``conv``."""
    names = tuple(n.strip() for n in cfg.ops.split(",") if n.strip())
    return names or tuple(p for p in primitives if "conv" in p)


# ---------------------------------------------------------------- spectral normalisation

class _Normalised(nn.Module):
    """The parametrisation of one conv weight: its slot in a :class:`SpectralNormBank`."""

    def __init__(self, bank: "SpectralNormBank", group: int, slot: int) -> None:
        super().__init__()
        self.bank, self.group, self.slot = bank, group, slot  # the bank is a plain object: no state here

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.bank.normalised(self.group, self.slot, w)


class _Group:
    """Convs of one geometry, normalised together: ``u`` [G, n_out], ``v`` [G, n_in]."""

    def __init__(self, convs: list[nn.Conv2d], size: tuple[int, int]) -> None:
        c0 = convs[0]
        self.convs = convs
        self.stride, self.padding = tuple(c0.stride), tuple(c0.padding)
        self.dilation, self.groups = tuple(c0.dilation), int(c0.groups)
        self.c_out, self.c_in = int(c0.out_channels), int(c0.in_channels)
        k = tuple(c0.kernel_size)
        # a 1x1 stride-1 dense conv is W (x) I on any input: its operator norm is the matrix's
        self.matrix = k == (1, 1) and self.stride == (1, 1) and self.groups == 1
        self.H, self.W = int(size[0]), int(size[1])
        out = [(n + 2 * p - d * (kk - 1) - 1) // s + 1
               for n, p, d, kk, s in zip((self.H, self.W), self.padding, self.dilation, k, self.stride)]
        self.Ho, self.Wo = out
        # conv_transpose2d must give back H x W exactly
        self.output_padding = tuple(n - ((o - 1) * s - 2 * p + d * (kk - 1) + 1)
                                    for n, o, s, p, d, kk in zip((self.H, self.W), out, self.stride, self.padding,
                                                                 self.dilation, k))
        self.n_in = self.c_in if self.matrix else self.c_in * self.H * self.W
        self.n_out = self.c_out if self.matrix else self.c_out * self.Ho * self.Wo
        self.u = torch.empty(0)
        self.v = torch.empty(0)
        self.originals: list[nn.Parameter] = []

    # A(x) and A^T(y) for all G convs at once: a grouped conv over the concatenated channels
    def forward_op(self, v: torch.Tensor, w_all: torch.Tensor) -> torch.Tensor:
        G = v.shape[0]
        if self.matrix:
            return torch.bmm(w_all.reshape(G, self.c_out, self.c_in), v.unsqueeze(-1)).squeeze(-1)
        y = F.conv2d(v.reshape(1, G * self.c_in, self.H, self.W), w_all, None, self.stride, self.padding,
                     self.dilation, G * self.groups)
        return y.reshape(G, -1)

    def adjoint_op(self, u: torch.Tensor, w_all: torch.Tensor) -> torch.Tensor:
        G = u.shape[0]
        if self.matrix:
            return torch.bmm(w_all.reshape(G, self.c_out, self.c_in).transpose(1, 2), u.unsqueeze(-1)).squeeze(-1)
        x = F.conv_transpose2d(u.reshape(1, G * self.c_out, self.Ho, self.Wo), w_all, None, self.stride,
                               self.padding, self.output_padding, G * self.groups, self.dilation)
        return x.reshape(G, -1)


class SpectralNormBank:
    """Spectral normalisation of many convs, ``W / (sigma(W) / coeff + eps)`` (docs/methods.md, "MSR-DARTS").

    sigma is the operator norm of the conv on its input (zero padding, its stride and
    dilation, at the (H, W) it is given), estimated as ``u^T A(W) v`` with power-iteration
    vectors u, v; the gradient flows through sigma (u, v are constants). For 1x1 stride-1
    convs the operator norm is the matrix norm of W, so they iterate on C-vectors (the
    official code iterates on C*H*W-vectors: the same fixed point).

    Convs of one geometry are one :class:`_Group` whose power iteration (and batched
    normalisation) is a single grouped conv call. The state is split so that every path
    computes the same numbers in any order:

    * :meth:`power_iteration` updates u, v in place (no gradient): the method calls it once per
      training forward, before it (the official hooks run once per forward in train mode);
      grouped convs first redraw u at random (``redraw``), as the official code does;
    * the normalised weight itself is a pure function of (W, u, v), computed by the
      parametrisation on every read of ``conv.weight``, or served from :meth:`batched`'s
      cache inside a forward. So the fast supernet path (which reads ``conv.weight``) and the
      reference path get the same weights.

    u, v live here, not in the supernet: they are saved by the method's ``state_dict``.
    """

    def __init__(self, convs: Sequence[tuple[nn.Conv2d, Sequence[int]]], *, coeff: float = 1.0,
                 iterations: int = 5, eps: float = 1e-5, redraw: bool = True,
                 generator: Callable[[], Optional[torch.Generator]] = lambda: None) -> None:
        self.coeff, self.iterations, self.eps, self.redraw = float(coeff), int(iterations), float(eps), redraw
        self.generator = generator
        keyed: dict[tuple[Any, ...], list[nn.Conv2d]] = {}
        sizes: dict[tuple[Any, ...], tuple[int, int]] = {}
        for conv, size in convs:
            if parametrize.is_parametrized(conv, "weight"):
                raise ValueError("a conv is already parametrised; spectral norm is applied once")
            key = (conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                   tuple(conv.padding), tuple(conv.dilation), conv.groups, conv.padding_mode, tuple(size),
                   conv.weight.dtype, conv.weight.device)
            if conv.padding_mode != "zeros":
                raise ValueError(f"spectral norm of a conv with padding_mode={conv.padding_mode!r} is not supported")
            keyed.setdefault(key, []).append(conv)
            sizes[key] = (int(size[0]), int(size[1]))
        self.groups: list[_Group] = []
        for key, cs in keyed.items():
            g = _Group(cs, sizes[key])
            w = cs[0].weight
            g.u = self._random((len(cs), g.n_out), w)
            g.v = self._random((len(cs), g.n_in), w)
            self.groups.append(g)
        self.generation = 0  # bumped whenever u, v change: invalidates the no-grad memo
        self._cache: Optional[list[list[torch.Tensor]]] = None
        self._memo: dict[tuple[int, int], tuple[Any, torch.Tensor]] = {}
        for gi, g in enumerate(self.groups):
            for j, conv in enumerate(g.convs):
                parametrize.register_parametrization(conv, "weight", _Normalised(self, gi, j))
            g.originals = [conv.parametrizations.weight.original for conv in g.convs]

    def _random(self, shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        gen = self.generator()
        x = torch.randn(shape, generator=gen, device=gen.device if gen is not None else like.device,
                        dtype=torch.float32).to(like.device)
        return F.normalize(x, dim=1)

    def __len__(self) -> int:
        return sum(len(g.convs) for g in self.groups)

    @staticmethod
    def _no_autocast(t: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(t.device.type, enabled=False)

    @torch.no_grad()
    def power_iteration(self) -> None:
        """``iterations`` steps ``v <- A^T u / |.|, u <- A v / |.|`` for every conv (in place)."""
        for g in self.groups:
            w_all = torch.cat([o.detach() for o in g.originals]).float()
            with self._no_autocast(w_all):
                u = g.u
                if self.redraw and g.groups != 1:
                    u = self._random(tuple(u.shape), w_all)
                for _ in range(self.iterations):
                    v = F.normalize(g.adjoint_op(u, w_all), dim=1)
                    u = F.normalize(g.forward_op(v, w_all), dim=1)
            g.u.copy_(u)
            g.v.copy_(v)
        self.generation += 1

    def _scale(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma / self.coeff + self.eps

    def _all_normalised(self) -> list[list[torch.Tensor]]:
        """Every normalised weight, one call per group (in the caller's gradient mode)."""
        out = []
        for g in self.groups:
            w_all = torch.cat(g.originals)
            with self._no_autocast(w_all):
                G = len(g.originals)
                sigma = (g.u.clone() * g.forward_op(g.v.clone(), w_all.float())).sum(1)
                shaped = w_all.view(G, g.c_out, *w_all.shape[1:])
                wn = shaped / self._scale(sigma).to(w_all.dtype).view(G, 1, 1, 1, 1)
            out.append(list(wn.unbind(0)))
        return out

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """Inside: every normalised weight is computed once, per group in one call (with the
        gradient mode of the caller), and ``conv.weight`` reads are served from that."""
        self._cache = self._all_normalised()
        try:
            yield
        finally:
            self._cache = None

    def _key(self, w: torch.Tensor) -> tuple[int, int, int]:
        return (id(w), w._version, self.generation)

    def normalised(self, gi: int, j: int, w: torch.Tensor) -> torch.Tensor:
        """The normalised weight of conv j of group gi (``w`` is its raw weight)."""
        g = self.groups[gi]
        own = len(g.originals) > j and w is g.originals[j]
        if self._cache is not None and own:
            return self._cache[gi][j]
        if own and not torch.is_grad_enabled():
            # evaluation: all weights in one batch, then reused until a weight or u, v changes
            hit = self._memo.get((gi, j))
            if hit is None or hit[0] != self._key(w):
                for hi, (h, ws) in enumerate(zip(self.groups, self._all_normalised())):
                    for hj, (o, wn) in enumerate(zip(h.originals, ws)):
                        self._memo[(hi, hj)] = (self._key(o), wn)
                hit = self._memo[(gi, j)]
            return hit[1]
        with self._no_autocast(w):
            sigma = (g.u[j].clone() * g.forward_op(g.v[j:j + 1].clone(), w.float())[0]).sum()
            return w / self._scale(sigma).to(w.dtype)

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {"u": [g.u.detach().cpu().clone() for g in self.groups],
                "v": [g.v.detach().cpu().clone() for g in self.groups]}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        if len(state["u"]) != len(self.groups):
            raise ValueError(f"spectral-norm state has {len(state['u'])} groups, this supernet {len(self.groups)}")
        for g, u, v in zip(self.groups, state["u"], state["v"]):
            g.u.copy_(u)
            g.v.copy_(v)
        self.generation += 1


# ---------------------------------------------------------------- where each conv runs

def record_input_sizes(supernet: nn.Module, modules: Sequence[nn.Module], input_shape: Sequence[int],
                       mixing: Mixing) -> dict[nn.Module, tuple[int, int]]:
    """The (H, W) of the input each of ``modules`` sees, from one forward of the reference
    path (every op module is called) on a zero batch in eval mode (nothing is updated)."""
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        sizes[module] = (int(args[0].shape[-2]), int(args[0].shape[-1]))

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    was_training = supernet.training
    p = next(supernet.parameters())
    reference = getattr(supernet, "reference", None)
    probe = reference("MSR-DARTS's input-size probe (one no-grad forward at setup)") if reference else None
    try:
        supernet.eval()
        with torch.no_grad(), probe or contextlib.nullcontext():
            supernet(torch.zeros(2, *input_shape, device=p.device, dtype=p.dtype), mixing)
    finally:
        for h in handles:
            h.remove()
        supernet.train(was_training)
    return sizes


# ---------------------------------------------------------------- the method

@METHODS.register("msr-darts", description="MSR-DARTS: ops selected by the minimum stable rank of their "
                                           "spectrally normalised convs; no architecture parameters")
class MSRDarts(Method):
    """Per-cell ``softmax(-srank)`` mixing, recomputed each epoch; weights-only training."""

    Config = MSRDartsConfig
    has_arch = False
    needs_arch_split = True  # the held-out part (1 - train_portion) is only evaluated, never trained on

    def __init__(self, cfg: MSRDartsConfig, space: Any, space_cfg: Any, device: torch.device | str = "cpu") -> None:
        super().__init__(cfg, space, space_cfg, device)
        self.device = torch.device(device)
        self.cell_types = tuple(space.cell_types)
        E, O = space.arch_shape(space_cfg)
        names = candidate_names(cfg, space.primitives)
        self.candidates = torch.tensor([p in names for p in space.primitives]).expand(E, O).clone()
        self.cell_type_of: dict[int, str] = {}  # supernet cell index -> cell type (set by prepare_supernet)
        self.mix_ranks: dict[int, torch.Tensor] = {}     # this epoch's mixing: cell -> [E, O] float64
        self.scored_ranks: dict[int, torch.Tensor] = {}  # the last derivation's stable ranks
        self.bank: Optional[SpectralNormBank] = None
        self._supernet: Optional[nn.Module] = None
        self._input_shape: tuple[int, ...] = ()
        self._scored: dict[tuple[int, int, int], tuple[nn.Conv2d, tuple[int, int]]] = {}
        self._mixing: Optional[Mixing] = None

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        from pcdarts.spaces import get_space
        prims = get_space(cfg.space.name).primitives
        names = candidate_names(cfg.method, prims)
        unknown = [n for n in names if n not in prims]
        if unknown or not names:
            raise ConfigError(f"method.ops={cfg.method.ops!r}: the candidates must be primitives of the "
                              f"{cfg.space.name} space ({', '.join(prims)})" + (f"; unknown: {unknown}" if unknown
                                                                                else ""))
        # a space whose edges offer their own ops (RobustDARTS's S1) may leave a node with too few
        # inputs that have a candidate: refused now, not when the finished search derives its cell
        space = get_space(cfg.space.name)
        E, O = space.arch_shape(cfg.space)
        cand = torch.tensor([p in names for p in prims]).expand(E, O)
        try:
            space.derive({ct: torch.zeros(E, O) for ct in space.cell_types}, {ct: cand for ct in space.cell_types})
        except ValueError as e:
            raise ConfigError(f"msr-darts ranks only the ops with a convolution (method.ops: {', '.join(names)}), and "
                              f"on the {cfg.space.name} space they leave a cell that cannot be derived ({e}); "
                              f"search this space with another method") from None

    # ---- building ------------------------------------------------------------
    def prepare_supernet(self, supernet: nn.Module, input_shape: tuple[int, int, int]) -> None:
        """Remove the non-candidate ops, find the resolution of every conv of the candidates,
        spectrally normalise them and compute the first mixing (docs/methods.md, "MSR-DARTS")."""
        supernet.prune({ct: self.candidates.clone() for ct in supernet.masks})
        ops = [(ct, c, e, o, op) for ct, c, e, o, op in supernet.candidate_ops() if bool(self.candidates[e, o])]
        convs = {(c, e, o): [m for m in op.modules() if isinstance(m, nn.Conv2d)] for _, c, e, o, op in ops}
        if any(not cs for cs in convs.values()):
            raise ConfigError("msr-darts: every candidate op needs a Conv2d (method.ops lists one without)")
        uniform = Mixing(ops={ct: torch.ones_like(m, dtype=torch.float32, device=next(supernet.parameters()).device)
                              for ct, m in supernet.masks.items()})
        sizes = record_input_sizes(supernet, [op for *_, op in ops] + [m for cs in convs.values() for m in cs],
                                   input_shape, uniform)
        cell_in: dict[int, tuple[int, int]] = {}
        for _, c, _, _, op in ops:
            cell_in[c] = max(cell_in.get(c, (0, 0)), sizes[op])
        self.cell_type_of = {c: ct for ct, c, *_ in ops}
        measured: list[tuple[nn.Conv2d, tuple[int, int]]] = []
        for _, c, e, o, op in ops:
            for conv in convs[(c, e, o)]:
                measured.append((conv, self._resolution(sizes[conv], sizes[op], cell_in[c])))
            self._scored[(c, e, o)] = measured[-1]  # the last conv (always the 1x1 in the DARTS space)
        if self.cfg.spectral_norm:
            self.bank = SpectralNormBank(measured, coeff=self.cfg.sn_coeff, iterations=self.cfg.sn_iterations,
                                         eps=self.cfg.sn_eps, redraw=self.cfg.sn_redraw,
                                         generator=lambda: self.generator)
        self._supernet, self._input_shape = supernet, tuple(input_shape)
        self._set_mixing(self._compute_ranks())

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Candidates removed before the search (``search.prune``, after :meth:`prepare_supernet`)
        are dropped: the spectral norms, scored convs and mixing are set up again on the pruned
        supernet, exactly as a resumed run (whose supernet is built pruned) sets them up."""
        if self._supernet is None:
            return
        live = {(c, e, o) for _, c, e, o, _ in self._supernet.candidate_ops()}
        if all(key in live for key in self._scored):
            return
        if self.bank is not None:
            for g in self.bank.groups:
                for conv in g.convs:
                    if parametrize.is_parametrized(conv, "weight"):
                        parametrize.remove_parametrizations(conv, "weight", leave_parametrized=False)
        self.bank, self._scored = None, {}
        self.prepare_supernet(self._supernet, self._input_shape)

    def _resolution(self, conv_in: tuple[int, int], op_in: tuple[int, int],
                    cell_in: tuple[int, int]) -> tuple[int, int]:
        """The (H, W) a conv is measured at: its own (``op``) or, as the official code, the cell's
        input resolution, halved (floor) after the op's stride (``cell``)."""
        if self.cfg.resolution == "op" or conv_in == op_in:
            return conv_in if self.cfg.resolution == "op" else cell_in
        return tuple(c // max(1, round(o / i)) for c, o, i in zip(cell_in, op_in, conv_in))  # type: ignore[return-value]

    # ---- the stable ranks and the mixing --------------------------------------
    def _compute_ranks(self) -> dict[int, torch.Tensor]:
        return sr.cell_stable_ranks(self._scored, tuple(self.candidates.shape), self.cfg.srank_mode)

    def _set_mixing(self, ranks: dict[int, torch.Tensor]) -> None:
        """Per cell ``softmax(-srank)`` over the candidates (others 0), float64 -> the device, once."""
        self.mix_ranks = ranks
        cells = {c: torch.softmax(-r, dim=-1).float().to(self.device) for c, r in ranks.items()}
        ops = {ct: torch.stack([w for c, w in cells.items() if self.cell_type_of[c] == ct]).mean(0)
               for ct in dict.fromkeys(self.cell_type_of.values())}
        self._mixing = Mixing(ops=ops, cells=cells)

    def mixing(self) -> Mixing:
        if self._mixing is None:  # no supernet prepared (e.g. pcdarts derive): uniform over the candidates
            w = (self.candidates.float() / self.candidates.sum(-1, keepdim=True)).to(self.device)
            return Mixing(ops={ct: w for ct in self.cell_types})
        return self._mixing

    def on_epoch_start(self, epoch: int, ctx: SearchContext) -> None:
        if self._supernet is not None:
            self._set_mixing(self._compute_ranks())

    def loss(self, ctx: SearchContext, batch: tuple[torch.Tensor, torch.Tensor], mixing: Mixing,
             step: str = "arch") -> tuple[torch.Tensor, dict[str, Any]]:
        """The objective, with the spectral norms' power iteration once before each training
        forward and the normalised weights computed in one batch for it."""
        if self.bank is None:
            return super().loss(ctx, batch, mixing, step)
        if self._supernet is not None and self._supernet.training:
            self.bank.power_iteration()
        with self.bank.batched():
            return super().loss(ctx, batch, mixing, step)

    def mean_stable_ranks(self, ctx: Optional[SearchContext] = None) -> dict[str, torch.Tensor]:
        """Mean [E, O] stable-rank matrix per cell type, from the current weights when the
        supernet is at hand (else the last ones saved: ``pcdarts derive``)."""
        if self._supernet is not None:
            self.scored_ranks = self._compute_ranks()
        ranks = self.scored_ranks or self.mix_ranks
        if not ranks:
            raise ValueError("msr-darts has no stable ranks yet: derive from a search's checkpoint")
        return sr.mean_by_type(ranks, self.cell_type_of)

    def scores(self, ctx: Optional[SearchContext] = None) -> dict[str, torch.Tensor]:
        from pcdarts.registry import SCORERS
        return SCORERS.get("stable-rank")(self, ctx)

    def cell_genotypes(self) -> dict[int, Any]:
        """Per supernet cell, the cell derived from its own stable ranks (the cell-type part of
        the space's genotype, e.g. ``normal`` for a normal DARTS cell)."""
        out = {}
        masks = {ct: self.candidates for ct in self.cell_types}
        for c, r in sorted((self.scored_ranks or self.mix_ranks).items()):
            ct = self.cell_type_of[c]
            g = self.space.derive({t: -r for t in self.cell_types}, masks, self.derive_rule())
            out[c] = getattr(g, ct, g)
        return out

    def arch_weights(self) -> dict[str, Any]:
        mix = self.mixing()
        out: dict[str, Any] = {"arch_weights": {ct: w.float().cpu().tolist() for ct, w in mix.ops.items()}}
        ranks = self.scored_ranks or self.mix_ranks
        if ranks:
            mean = sr.mean_by_type(ranks, self.cell_type_of)
            out["stable_rank"] = {ct: [[None if v == float("inf") else round(v, 6) for v in row] for row in m.tolist()]
                                  for ct, m in mean.items()}
        if self.cfg.per_cell and ranks:
            out["cell_genotypes"] = {str(c): str(list(g) if isinstance(g, tuple) else g)
                                     for c, g in self.cell_genotypes().items()}
        return out

    # ---- checkpoint ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.state_dict(), "cell_types": dict(self.cell_type_of),
                "mix_ranks": {c: r.clone() for c, r in self.mix_ranks.items()},
                "scored_ranks": {c: r.clone() for c, r in self.scored_ranks.items()},
                "spectral_norm": None if self.bank is None else self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.arch.load_state_dict(state["arch"])
        self.cell_type_of = {int(c): ct for c, ct in state["cell_types"].items()}
        self.scored_ranks = {int(c): r.clone() for c, r in state["scored_ranks"].items()}
        if state["mix_ranks"]:
            self._set_mixing({int(c): r.clone() for c, r in state["mix_ranks"].items()})
        if self.bank is not None and state.get("spectral_norm") is not None:
            self.bank.load_state_dict(state["spectral_norm"])


__all__ = ["MSRDarts", "MSRDartsConfig", "SpectralNormBank", "record_input_sizes", "candidate_names"]
