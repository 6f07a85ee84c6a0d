"""The RobustDARTS search spaces S1-S4 (Zela et al., ICLR 2020, "Understanding and Robustifying
Differentiable Architecture Search"), the standard stress test of DARTS's collapse.

Each is the DARTS cell space (ALGORITHMS §1.1-1.5: 4-node normal and reduction cells, the
8-cell CIFAR supernet, the DARTS derive rule, :class:`~pcdarts.genotype.DartsGenotype` results
trained with the DARTS evaluation network) with other candidate ops. The candidate sets are
data, transcribed from the authors' ``src/spaces.py`` (``automl/RobustDARTS``):

* ``s1``: every edge of the normal and of the reduction cell has its own pair of DARTS ops
  (:data:`S1_NORMAL`, :data:`S1_REDUCE`; edges in DARTS order, node 2's inputs 0 and 1 first);
* ``s2``: {skip_connect, sep_conv_3x3} on every edge;
* ``s3``: {none, skip_connect, sep_conv_3x3} on every edge;
* ``s4``: {noise, sep_conv_3x3} on every edge; ``noise`` (:class:`pcdarts.nn.ops.Noise`) is
  a fresh N(0, 1) sample of the shape of the op's input at the edge's stride, at reduction
  edges too, as the official ``NoiseOp``.

How the per-edge sets of S1 reach everything downstream (the generic seam
:attr:`~pcdarts.spaces.SearchSpace.edge_candidates`): the space's ``primitives`` are the union
of its ops (in the DARTS order), and :meth:`~pcdarts.spaces.SearchSpace.candidate_masks` marks
each edge's own. The supernet is built with those masks, so the other ops never exist (nor run,
on the reference and the fast path alike); every method learns them through ``set_masks``, so a
softmax (or a Dirichlet) spans only the edge's two ops, and derivation never leaves them. The
mixing is the official one (softmax over the edge's ops); the architecture tensor just has a
column per op of the union, those an edge lacks carrying no weight and no gradient. S2-S4 have
the same ops on every edge: their primitives are the official list, in its order.

Derivation is DARTS's (``darts``: per node the two inputs of largest non-``none`` weight, the
argmax op of each; ``none`` matters on S3 only); ``node-pairs`` is offered as on the DARTS space.
The official ``genotype()`` excludes ``none`` by looking up the op list of the wrong edge
(input index instead of edge index); all edges of S3 are alike, so that changes nothing.
"""
from __future__ import annotations

from typing import Any

from pcdarts.errors import ConfigError
from pcdarts.genotype.primitives import DARTS_PRIMITIVES
from pcdarts.registry import SPACES
from pcdarts.spaces.darts import DartsSpace

# S1, per edge (official order of the edges and of the two ops of each)
S1_NORMAL: tuple[tuple[str, ...], ...] = (
    ("skip_connect", "dil_conv_3x3"), ("skip_connect", "dil_conv_5x5"),           # node 2
    ("skip_connect", "dil_conv_5x5"), ("skip_connect", "sep_conv_3x3"),           # node 3
    ("skip_connect", "dil_conv_3x3"),
    ("max_pool_3x3", "skip_connect"), ("skip_connect", "sep_conv_3x3"),           # node 4
    ("skip_connect", "sep_conv_3x3"), ("skip_connect", "dil_conv_3x3"),
    ("skip_connect", "sep_conv_3x3"), ("max_pool_3x3", "skip_connect"),           # node 5
    ("skip_connect", "dil_conv_3x3"), ("dil_conv_3x3", "dil_conv_5x5"), ("dil_conv_3x3", "dil_conv_5x5"),
)
S1_REDUCE: tuple[tuple[str, ...], ...] = (
    ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "dil_conv_3x3"),           # node 2
    ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "avg_pool_3x3"),           # node 3
    ("skip_connect", "dil_conv_5x5"),
    ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "sep_conv_3x3"),           # node 4
    ("skip_connect", "dil_conv_3x3"), ("skip_connect", "dil_conv_5x5"),
    ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "avg_pool_3x3"),           # node 5
    ("skip_connect", "dil_conv_5x5"), ("skip_connect", "dil_conv_5x5"), ("skip_connect", "dil_conv_5x5"),
)
S2_OPS: tuple[str, ...] = ("skip_connect", "sep_conv_3x3")
S3_OPS: tuple[str, ...] = ("none", "skip_connect", "sep_conv_3x3")
S4_OPS: tuple[str, ...] = ("noise", "sep_conv_3x3")
NODES = 4  # the cells of the official spaces (S1's lists are per edge of a 4-node cell)
ROBUST_SPACES = ("s1", "s2", "s3", "s4")  # their registered names


class RobustSpace(DartsSpace):
    """A RobustDARTS space: the DARTS cell space with its own candidate ops (see the module)."""

    none_is_placeholder = False  # S3 lists ``none`` as a candidate on purpose (the others lack it)

    def check_config(self, space_cfg: Any) -> None:
        super().check_config(space_cfg)
        nodes = getattr(space_cfg, "nodes", NODES)
        if self.edge_candidates is not None and nodes != NODES:
            raise ConfigError(f"space.nodes={nodes}: the {self.name} space lists the candidate ops of each edge of "
                              f"a {NODES}-node cell; drop --space.nodes (or set it to {NODES})")


@SPACES.register("s1", description="RobustDARTS S1: DARTS cells, every edge its own pair of DARTS ops")
class S1Space(RobustSpace):
    name = "s1"
    primitives = tuple(p for p in DARTS_PRIMITIVES if any(p in ops for ops in S1_NORMAL + S1_REDUCE))
    edge_candidates = {"normal": S1_NORMAL, "reduce": S1_REDUCE}


@SPACES.register("s2", description="RobustDARTS S2: DARTS cells, {skip_connect, sep_conv_3x3} on every edge")
class S2Space(RobustSpace):
    name = "s2"
    primitives = S2_OPS


@SPACES.register("s3", description="RobustDARTS S3: DARTS cells, {none, skip_connect, sep_conv_3x3} on every edge")
class S3Space(RobustSpace):
    name = "s3"
    primitives = S3_OPS


@SPACES.register("s4", description="RobustDARTS S4: DARTS cells, {noise, sep_conv_3x3} on every edge")
class S4Space(RobustSpace):
    name = "s4"
    primitives = S4_OPS


__all__ = ["ROBUST_SPACES", "S1_NORMAL", "S1_REDUCE", "S2_OPS", "S3_OPS", "S4_OPS", "RobustSpace", "S1Space",
           "S2Space", "S3Space", "S4Space"]
