"""Network building blocks: candidate operations, the mixed edge (reference path), the
fast supernet path and the evaluation networks of found cells."""

from pcdarts.nn import broad  # noqa: E402,F401  (registers the broad evaluation network in NETWORKS)
