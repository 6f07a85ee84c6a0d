"""Genotypes: the discrete cells a search finds.

:mod:`.primitives` (op names), :mod:`.types` (the dataclasses, parsing and JSON forms;
no torch), :mod:`.published` (cells from the papers), :mod:`.io` (load/save files, run
directories, strings and published names).
"""
from __future__ import annotations

from pcdarts.genotype.io import load_genotype, save_genotype
from pcdarts.genotype.primitives import DARTS_PRIMITIVES, NB201_PRIMITIVES
from pcdarts.genotype.published import PUBLISHED
from pcdarts.genotype.types import (NB201_EDGES, BroadGenotype, DartsGenotype, Genotype, GenotypeError,
                                    NB201Genotype, genotype_from_dict, parse_genotype,
                                    register_genotype_type)

__all__ = ["DARTS_PRIMITIVES", "NB201_PRIMITIVES", "NB201_EDGES", "PUBLISHED", "BroadGenotype", "DartsGenotype",
           "Genotype", "GenotypeError", "NB201Genotype", "genotype_from_dict", "load_genotype", "parse_genotype",
           "register_genotype_type", "save_genotype"]
