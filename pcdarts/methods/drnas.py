"""DrNAS, Dirichlet neural architecture search (Chen et al., ICLR 2021; docs/methods.md, "DrNAS").

The op weights of every edge are a random variable ``theta ~ Dir(beta)`` with concentration
``beta = ELU(eta) + 1``; ``eta`` (initialised ``1e-3 * N(0, 1)``, so beta starts near the
uniform Dir(1)) is learned through reparameterised (implicit-gradient) samples. One sample
per edge per forward pass, shared by all cells of a type and all images of the batch,
drawn from the search's architecture generator (``SearchContext.generator``), so a run is
reproducible and resumable. The regulariser pulls beta towards the anchor Dir(1): ``l2``
is Adam weight decay ``reg_scale`` on eta (the official default), ``kl`` adds
``reg_scale * sum_edges KL(Dir(beta) || Dir(1))`` to the architecture loss. First order.

As in the official code: on the DARTS space ``none`` is not a candidate (7 ops), on
NAS-Bench-201 it is; pruned ops get weight 0 and the sample is renormalised over the
survivors; the genotype ranks ops by ``softmax(eta)`` over the candidates
(``derive="mean"`` ranks by the Dirichlet mean ``beta / sum(beta)`` instead: the same
order within an edge, a different one across edges). Progressive learning (K 6 -> 4, ops
7 -> 4 between stages on the DARTS space) is ``stage_starts`` / ``stage_keep_ops`` / ``stage_k``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Optional

import torch
import torch.nn.functional as F

from pcdarts.errors import ConfigError
from pcdarts.methods.base import SearchContext
from pcdarts.methods.darts import Darts, DartsConfig
from pcdarts.nn.edges import Mixing
from pcdarts.ranges import EPOCHS, Count, EpochIndex, Range, Rate
from pcdarts.registry import METHODS

REGULARISERS = ("l2", "kl")
DERIVE_RULES = ("softmax", "mean")


class DirichletSample(torch.autograd.Function):
    """``x ~ Dir(concentration)`` (rows) drawn from ``generator``, with the implicit
    reparameterisation gradient that ``torch.distributions.Dirichlet.rsample`` uses."""

    @staticmethod
    def forward(ctx: Any, concentration: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        x = torch._sample_dirichlet(concentration, generator=generator)
        ctx.save_for_backward(x, concentration)
        return x

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, concentration = ctx.saved_tensors
        total = concentration.sum(-1, True).expand_as(concentration)
        grad = torch._dirichlet_grad(x, concentration, total)
        return grad * (grad_output - (x * grad_output).sum(-1, True)), None


def dirichlet_rsample(concentration: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One reparameterised Dirichlet sample per row of ``concentration``."""
    return DirichletSample.apply(concentration, generator)


@dataclass(frozen=True)
class DrNASConfig(DartsConfig):
    """DrNAS (authors' values, DARTS space): arch lr 6e-4, l2 regulariser 1e-3, first order.

    Attributes:
        reg_type: ``l2`` (Adam weight decay ``reg_scale`` on eta) or ``kl``
            (``reg_scale * KL(Dir(beta) || Dir(1))`` summed over edges, in the arch loss).
        reg_scale: lambda of the regulariser (1e-3).
        derive: rank ops by ``softmax`` of eta (official) or by the Dirichlet ``mean``.
        keep_none: let ``none`` be a candidate; None = the space's rule (``space.none_is_placeholder``:
            DARTS and broad no; NB201 and S3 yes).
        stage_starts: epochs at which a new stage of progressive learning begins (empty =
            one stage, the plain DrNAS run). At each: keep the ``stage_keep_ops[i]`` ops of
            every edge with the largest eta and remove the others from the supernet
            (survivors keep their eta, the others are set to 0 and masked), then, with
            ``stage_k``, lower the partial-channel factor to ``stage_k[i]`` (ops rebuilt wider,
            weights copied in). ``warmup_epochs`` then counts from each stage's start (the
            architecture is updated from epoch 10 of each stage in the official code).
        stage_keep_ops, stage_k: one entry per stage start (``stage_k`` may be empty: K kept).
    """

    arch_lr: Rate = 6e-4
    reg_type: str = "l2"
    reg_scale: Rate = 1e-3
    derive: str = "softmax"
    keep_none: Optional[bool] = None
    stage_starts: Annotated[tuple[int, ...], Range(1), EPOCHS] = ()
    stage_keep_ops: Annotated[tuple[int, ...], Range(1)] = ()
    stage_k: Annotated[tuple[int, ...], Range(1)] = ()
    warmup_epochs: EpochIndex = 0
    k: Count = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.order != 1:
            raise ConfigError("drnas is first order (method.order must be 1)")
        if self.reg_type not in REGULARISERS:
            raise ConfigError(f"method.reg_type must be one of {', '.join(REGULARISERS)}, got {self.reg_type!r}")
        if self.derive not in DERIVE_RULES:
            raise ConfigError(f"method.derive must be one of {', '.join(DERIVE_RULES)}, got {self.derive!r}")
        if self.edge_norm:
            raise ConfigError("drnas has no edge normalisation (method.edge_norm must be false)")
        n = len(self.stage_starts)
        if len(self.stage_keep_ops) != n or len(self.stage_k) not in (0, n):
            raise ConfigError(f"method.stage_keep_ops {list(self.stage_keep_ops)} (and method.stage_k "
                              f"{list(self.stage_k)}, if given) need one entry per method.stage_starts "
                              f"{list(self.stage_starts)}")
        if list(self.stage_starts) != sorted(set(self.stage_starts)):
            raise ConfigError(f"method.stage_starts must be increasing epochs, got {list(self.stage_starts)}")


@METHODS.register("drnas", description="DrNAS: Dirichlet op weights, reparameterised samples (ICLR 2021)")
class DrNAS(Darts):
    """eta per cell type; Mixing = one Dirichlet sample of ELU(eta) + 1 per edge per step."""

    Config = DrNASConfig

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        super().check_config(cfg)
        m, k = cfg.method, cfg.k
        for i, (start, new_k) in enumerate(zip(m.stage_starts, m.stage_k or [None] * len(m.stage_starts))):
            if int(start) >= cfg.search.epochs:
                raise ConfigError(f"method.stage_starts[{i}]={start} must be smaller than search.epochs="
                                  f"{cfg.search.epochs}; to run fewer epochs, use --budget N instead of "
                                  "--search.epochs (it scales the stage starts alike)")
            if new_k is not None:
                if int(new_k) >= k or cfg.space.C % int(new_k):
                    raise ConfigError(f"method.stage_k[{i}]={new_k} must be smaller than the K before it ({k}) "
                                      f"and divide space.C={cfg.space.C}")
                k = int(new_k)

    def __init__(self, cfg: DrNASConfig, space: Any, space_cfg: Any, device: Any = "cpu") -> None:
        super().__init__(cfg, space, space_cfg, device)
        # the Adam of the base class, with the regulariser's weight decay
        self.optimizer = torch.optim.Adam(self.arch.parameters(), lr=cfg.arch_lr, betas=tuple(cfg.arch_betas),
                                          weight_decay=cfg.reg_scale if cfg.reg_type == "l2" else 0.0)
        keep_none = cfg.keep_none if cfg.keep_none is not None else not space.none_is_placeholder
        E, O = space.arch_shape(space_cfg)
        candidates = torch.ones(E, O, dtype=torch.bool)
        if not keep_none and "none" in space.primitives:
            candidates[:, space.primitives.index("none")] = False
        # candidates: ops of the space (none excluded on DARTS); masks: what pruning left
        self.arch.register_buffer("candidates", candidates.to(device))
        for ct in self.cell_types:
            self.arch.register_buffer(f"mask_{ct}", candidates.clone().to(device))
        self.pruned = False

    def masks(self) -> dict[str, torch.Tensor]:
        return {ct: getattr(self.arch, f"mask_{ct}") for ct in self.cell_types}

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Ops removed before the search (``search.prune``) join the pruned ones: zeroed in
        every sample, the rest renormalised, as after a progressive-learning stage."""
        for ct, mask in self.masks().items():
            if ct in masks:
                mask.copy_(mask & masks[ct].to(mask.device).bool())
        self.pruned = any(not torch.equal(m, self.arch.candidates) for m in self.masks().values())

    def concentration(self, ct: str) -> torch.Tensor:
        return F.elu(self.alphas[ct]) + 1

    def _sample(self, ct: str) -> torch.Tensor:
        """[E, O] weights: a Dirichlet sample over the space's candidates, pruned ops zeroed
        and the rest renormalised (exactly the official order of operations)."""
        cand, mask = self.arch.candidates, self.masks()[ct]
        E, O = cand.shape
        n = int(cand[0].sum())
        conc = self.concentration(ct)[cand].view(E, n)
        theta = dirichlet_rsample(conc, self.generator)
        full = torch.zeros(E, O, dtype=theta.dtype, device=theta.device).masked_scatter(cand, theta)
        if self.pruned:  # a Python flag: no device sync per step
            full = full * mask
            full = full / full.sum(-1, keepdim=True)
        return full

    def mixing(self) -> Mixing:
        return Mixing(ops={ct: self._sample(ct) for ct in self.cell_types})

    def _masked_softmax(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x.masked_fill(~mask, float("-inf")), dim=-1)

    def scores(self, ctx: Optional[SearchContext] = None) -> dict[str, torch.Tensor]:
        out = {}
        for ct, mask in self.masks().items():
            eta = self.alphas[ct].detach().float()
            if self.cfg.derive == "softmax":
                w = self._masked_softmax(eta, mask)
            else:
                conc = (F.elu(eta) + 1) * mask
                w = conc / conc.sum(-1, keepdim=True)
            out[ct] = w.cpu()
        return out

    def arch_weights(self) -> dict[str, Any]:
        with torch.no_grad():
            w = {ct: self._masked_softmax(a.detach().float(), self.masks()[ct]) for ct, a in self.alphas.items()}
            conc = {ct: self.concentration(ct).detach().float() for ct in self.cell_types}
        return {"arch_weights": {ct: v.cpu().tolist() for ct, v in w.items()},
                "concentration": {ct: v.cpu().tolist() for ct, v in conc.items()}}

    def stage_start(self, epoch: int) -> int:
        """The first epoch of the stage ``epoch`` belongs to."""
        return max([0] + [int(e) for e in self.cfg.stage_starts if int(e) <= epoch])

    def is_arch_active(self, epoch: int) -> bool:
        return epoch - self.stage_start(epoch) >= self.cfg.warmup_epochs

    def on_epoch_start(self, epoch: int, ctx: SearchContext) -> None:
        super().on_epoch_start(epoch, ctx)  # the architecture lr schedule
        for i, at in enumerate(self.cfg.stage_starts):
            if epoch == int(at):
                self.prune_to(int(self.cfg.stage_keep_ops[i]), ctx)
                if self.cfg.stage_k:
                    ctx.widen(int(self.cfg.stage_k[i]))

    @torch.no_grad()
    def prune_to(self, keep: int, ctx: SearchContext) -> None:
        """Keep the ``keep`` live ops of largest eta per edge; zero the others' eta and remove them."""
        for ct, mask in self.masks().items():
            eta = self.alphas[ct]
            idx = eta.masked_fill(~mask, float("-inf")).topk(min(keep, int(mask[0].sum())), dim=-1).indices
            kept = torch.zeros_like(mask).scatter(1, idx, True)
            eta.copy_(torch.zeros_like(eta).scatter(1, idx, eta.gather(1, idx)))
            mask.copy_(kept & mask)
        self.pruned = True
        ctx.prune({ct: m.cpu() for ct, m in self.masks().items()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pruned = any(not torch.equal(m, self.arch.candidates) for m in self.masks().values())

    def kl_to_uniform(self) -> torch.Tensor:
        """sum over edges and cell types of KL(Dir(beta) || Dir(1)) over each edge's candidates."""
        from torch.distributions import Dirichlet, kl_divergence
        total = None
        for ct, mask in self.masks().items():
            E = mask.shape[0]
            conc = self.concentration(ct)[mask].view(E, -1)
            kl = kl_divergence(Dirichlet(conc), Dirichlet(torch.ones_like(conc))).sum()
            total = kl if total is None else total + kl
        return total

    def _loss(self, ctx: SearchContext,
              batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        loss, metrics = super()._loss(ctx, batch)
        if self.cfg.reg_type == "kl":
            loss = loss + self.cfg.reg_scale * self.kl_to_uniform()
        return loss, metrics


__all__ = ["DrNAS", "DrNASConfig", "DirichletSample", "dirichlet_rsample"]
