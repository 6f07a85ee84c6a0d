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

from pcdarts.errors import ConfigError

MISSING = ("run.tensorboard (--tensorboard) needs the tensorboard package: pip install \"pcdarts[tensorboard]\" "
           "(or pip install tensorboard), or drop --tensorboard")
SKIP = {"epoch"}  # the step, not a scalar


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard imports the tensorboard package
        raise ConfigError(MISSING) from None
    return SummaryWriter


def scalars(rec: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a record, nested dicts flattened with ``/`` (``arch_entropy/normal``);
    booleans, strings, lists and ``epoch`` left out."""
    out: dict[str, float] = {}
    for key, value in rec.items():
        if not prefix and key in SKIP:
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, tag + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[tag] = float(value)
    return out


class TBWriter:
    """Writes a run's per-epoch records to ``run_dir/tb``.

    Args:
        run_dir: the run directory.

    Raises:
        ConfigError: the tensorboard package is not installed (checked here, at once).
    """

    def __init__(self, run_dir: Union[str, Path]) -> None:
        self.log_dir = Path(run_dir) / "tb"
        self._cls = _summary_writer()
        self._writer: Optional[Any] = None

    @property
    def writer(self) -> Any:
        if self._writer is None:
            self._writer = self._cls(log_dir=str(self.log_dir))
        return self._writer

    def epoch(self, rec: dict[str, Any]) -> None:
        """Scalars and arch-weight histograms of one epoch's record (step = ``rec["epoch"]``)."""
        step = int(rec.get("epoch", 0))
        w = self.writer
        for tag, value in scalars(rec).items():
            w.add_scalar(tag, value, step)
        import numpy as np
        for name in ("arch_weights", "edge_weights"):
            for cell_type, rows in (rec.get(name) or {}).items():
                if name == "edge_weights":
                    w.add_histogram(f"{name}/{cell_type}", np.asarray(rows, dtype=np.float64), step)
                    continue
                for i, row in enumerate(rows):
                    w.add_histogram(f"{name}/{cell_type}/edge{i}", np.asarray(row, dtype=np.float64), step)
        w.flush()

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

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def writer(run_dir: Union[str, Path], enabled: bool) -> Optional[TBWriter]:
    """A :class:`TBWriter` when ``enabled`` (else None): the one line the loops call."""
    return TBWriter(run_dir) if enabled else None


__all__ = ["MISSING", "TBWriter", "scalars", "writer"]
