"""Reading and writing genotypes: files, run directories, strings and published names."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from pcdarts.genotype.published import PUBLISHED
from pcdarts.genotype.types import Genotype, GenotypeError, looks_like_genotype_text, parse_genotype


def load_genotype(source: Union[str, Path]) -> Genotype:
    """Load a genotype from a file (JSON or text), a string, or a published name.

    Args:
        source: path to ``genotype.json`` (or a run directory holding one), a
            genotype string, or a name from :data:`PUBLISHED`.
    """
    s = str(source)
    if s in PUBLISHED:
        return PUBLISHED[s]
    p = Path(s)
    try:
        if p.is_dir() and (p / "genotype.json").is_file():
            p = p / "genotype.json"
        is_file = p.is_file()
    except OSError:  # e.g. a long genotype string is not a valid file name
        is_file = False
    if is_file:
        text = p.read_text()
        try:
            return parse_genotype(text)
        except GenotypeError as e:
            raise GenotypeError(f"{p}: {e}") from None
    if looks_like_genotype_text(s):
        return parse_genotype(s)
    raise GenotypeError(f"{s!r} is not a genotype file, a genotype string, or a published name "
                        f"(published: {', '.join(sorted(PUBLISHED))})")


def save_genotype(genotype: Genotype, path: Union[str, Path]) -> None:
    d = genotype.to_dict()
    d["str"] = str(genotype)
    Path(path).write_text(json.dumps(d, indent=2) + "\n")
