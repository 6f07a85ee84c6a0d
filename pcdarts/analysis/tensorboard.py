"""TensorBoard output of a search or a training run (``--tensorboard`` / ``run.tensorboard: true``).

One small writer fed with the per-epoch records the loops already build (the lines of
``history.jsonl``), so TensorBoard shows exactly what the run logs: every number of a
record as a scalar at step = epoch (losses, accuracies, learning rates, the collapse
diagnostics ``param_free_ops`` and ``arch_entropy/<cell type>``, the NB201 lookups as
``nb201/<dataset>/<valid|test>``), the architecture weights as one histogram per edge
(``arch_weights/<cell type>/edge<i>``) and, at the end of a search, the picture of the
derived cell (``cell/<normal|reduce|cell>``). Events go to ``RUN_DIR/tb/``; view them with
``tensorboard --logdir RUN_DIR/tb``.

TensorBoard is an optional dependency (``pip install "pcdarts[tensorboard]"``): asking for
it without the package raises a one-line ConfigError before anything runs. The event
directory is created at the first record, after the run has claimed its directory.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from pcdarts import utils
from pcdarts.utils import TENSORBOARD_MISSING as MISSING, tb_scalars as scalars

__all__ = ["MISSING", "TBWriter", "scalars", "writer"]


class TBWriter(utils.TBWriter):
    """The search's TensorBoard writer: the per-epoch records (:class:`pcdarts.utils.TBWriter`,
    which training uses alone) and, at the end, the picture of the derived cell."""

    def cell(self, genotype: Any, step: int = 0) -> None:
        """The picture of the derived cell(s) (:func:`pcdarts.analysis.plot.plot_genotype`);
        a picture that cannot be drawn is a warning, never a failed run."""
        try:
            import numpy as np
            from PIL import Image
            from pcdarts.analysis.plot import plot_genotype
            with tempfile.TemporaryDirectory() as tmp:
                for path in plot_genotype(genotype, Path(tmp) / "genotype", formats=("png",)):
                    image = np.asarray(Image.open(path).convert("RGB"))
                    self.writer.add_image(f"cell/{path.stem.rsplit('_', 1)[-1]}", image, step, dataformats="HWC")
            self.writer.flush()
        except Exception as e:  # a convenience: never lose a finished run over it
            warnings.warn(f"could not add the cell picture to TensorBoard: {e}")


def writer(run_dir: Union[str, Path], enabled: bool) -> Optional[TBWriter]:
    """A :class:`TBWriter` when ``enabled`` (else None): the one line the search calls."""
    return TBWriter(run_dir) if enabled else None
