"""The fast supernet path: per-node batched kernels (blocks, conv, pool, kernels) and the
cell runner (cells) that the spaces' fast supernets use. Same parameters and the same
mathematics as the reference :class:`pcdarts.nn.edges.MixedEdge`."""
