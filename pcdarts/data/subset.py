"""Reproducible per-class PC-DARTS ImageNet search subsets (:func:`build_subset`), written as
image folders; the ``pcdarts subset SRC DST`` subcommand that calls it is in
:mod:`pcdarts.cli.tools`."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from pcdarts.data.folders import FolderError, scan_folder
from pcdarts.errors import ConfigError

LINK_MODES = ("symlink", "hardlink", "copy")


def _round_half_up(n: int, fraction: float) -> int:
    return int((Decimal(n) * Decimal(repr(fraction))).to_integral_value(rounding=ROUND_HALF_UP))


def _class_rng(seed: int, name: str) -> random.Random:
    digest = hashlib.sha256(f"pcdarts-subset:{seed}:{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _place(src: Path, dst: Path, link: str) -> None:
    try:
        if link == "symlink":
            os.symlink(src.resolve(), dst)
        elif link == "hardlink":
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)
    except OSError as exc:
        hint = "" if link == "copy" else "; try --link copy"
        raise FolderError(f"cannot {link} {src} -> {dst}: {exc}{hint}") from exc


def build_subset(src: str | os.PathLike, dst: str | os.PathLike, train: float = 0.1,
                 arch: float = 0.025, seed: int = 0, link: str = "symlink",
                 overwrite: bool = False) -> dict[str, Any]:
    """Build the per-class PC-DARTS search subsets ``dst/train`` and ``dst/arch``.

    For every class folder of ``src`` with ``n`` images, ``max(1, round_half_up(n *
    train))`` images go to ``dst/train/<class>/`` and a disjoint ``max(1,
    round_half_up(n * arch))`` to ``dst/arch/<class>/`` (if rounding makes them exceed
    ``n``, the arch, then the train count is reduced so both keep >= 1 image). Each
    class is sampled with its own RNG seeded from sha256(seed, class name), so adding
    or removing classes leaves the other classes' picks unchanged. ``dst/subset.json``
    records the seed, fractions, counts, source and chosen files.

    Args:
        src: ImageNet-style folder ``src/<class>/<image>``.
        dst: output folder; must be empty or absent unless ``overwrite``.
        train: fraction of each class for the weight-training split, in (0, 1).
        arch: fraction for the architecture split, in (0, 1); ``train + arch <= 1``.
        seed: base seed.
        link: ``"symlink"`` (default), ``"hardlink"`` or ``"copy"``.
        overwrite: replace ``dst/train``, ``dst/arch`` and ``dst/subset.json`` (other
            files in ``dst`` are left alone).

    Returns:
        The ``subset.json`` content as a dict.
    """
    if not (0 < train < 1 and 0 < arch < 1) or train + arch > 1 + 1e-12:
        raise ConfigError(f"subset fractions must each be in (0, 1) with train + arch <= 1, got "
                         f"train={train}, arch={arch}")
    if link not in LINK_MODES:
        raise ConfigError(f"subset link must be one of {', '.join(LINK_MODES)}, got {link!r}")
    src_p, dst_p = Path(src).resolve(), Path(dst).resolve()
    if dst_p == src_p or src_p in dst_p.parents:
        raise ConfigError(f"subset destination {dst_p} lies inside the source {src_p}; pick a "
                         "folder outside it")
    classes, samples = scan_folder(src_p)
    if dst_p.exists() and not dst_p.is_dir():
        raise FileExistsError(f"subset destination {dst_p} exists and is not a folder")
    if dst_p.is_dir() and any(dst_p.iterdir()):
        if not overwrite:
            raise FileExistsError(f"subset destination {dst_p} is not empty; choose an empty "
                                  "folder or pass --overwrite (overwrite=True)")
        for sub in ("train", "arch"):
            if (dst_p / sub).is_symlink() or (dst_p / sub).is_file():
                (dst_p / sub).unlink()
            elif (dst_p / sub).exists():
                shutil.rmtree(dst_p / sub)
        (dst_p / "subset.json").unlink(missing_ok=True)
    by_class: dict[int, list[str]] = {}
    for path, label in samples:
        by_class.setdefault(label, []).append(os.path.basename(path))
    counts: dict[str, dict[str, int]] = {}
    files: dict[str, dict[str, list[str]]] = {"train": {}, "arch": {}}
    for label, name in enumerate(classes):
        names = by_class[label]
        n = len(names)
        if n < 2:
            raise FolderError(f"{src_p / name}: class has {n} image; need at least 2 for disjoint "
                              "train and arch samples")
        k_train, k_arch = max(1, _round_half_up(n, train)), max(1, _round_half_up(n, arch))
        k_arch = min(k_arch, n - k_train)
        if k_arch < 1:
            k_train, k_arch = n - 1, 1
        picked = _class_rng(seed, name).sample(names, k_train + k_arch)
        files["train"][name], files["arch"][name] = sorted(picked[:k_train]), sorted(picked[k_train:])
        counts[name] = {"total": n, "train": k_train, "arch": k_arch}
    for split in ("train", "arch"):
        for name in classes:
            out = dst_p / split / name
            out.mkdir(parents=True, exist_ok=True)
            for fname in files[split][name]:
                _place(src_p / name / fname, out / fname, link)
    record = {"version": 1, "source": str(src_p), "seed": seed,
              "fractions": {"train": train, "arch": arch}, "link": link,
              "num_classes": len(classes),
              "totals": {s: sum(c[s] for c in counts.values()) for s in ("total", "train", "arch")},
              "counts": counts, "files": files}
    (dst_p / "subset.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
