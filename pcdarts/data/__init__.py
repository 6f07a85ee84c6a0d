"""Data: dataset sources (digits, CIFAR archives, image folders, unlabelled folders, synthetic), the
device-resident loader, streamed folders, image transforms and search subsets.

One path for search and training: both read datasets through :mod:`.sources` (which
registers the names in ``DATASETS``) and image folders through :mod:`.folders`.
"""
from __future__ import annotations

from pcdarts.data import folder_source, sources, unlabelled  # noqa: F401  (registration)
from pcdarts.data.sources import DataError, load_dataset, split_indices

__all__ = ["DataError", "load_dataset", "split_indices"]
