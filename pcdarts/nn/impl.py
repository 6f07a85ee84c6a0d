"""Which mixed-edge implementation runs: the fast path or the reference (the oracle)."""
from __future__ import annotations

IMPLS = ("auto", "fast", "reference")


def resolve_impl(impl: str, device_type: str) -> str:
    """``auto`` -> ``fast`` on CPU, ``reference`` on CUDA (measured faster there, and the CUDA
    fast path's gradients are not yet verified); an explicit choice is kept."""
    if impl != "auto":
        return impl
    return "reference" if device_type == "cuda" else "fast"


__all__ = ["IMPLS", "resolve_impl"]
