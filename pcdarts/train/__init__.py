"""Training found cells from scratch: the Trainer (:mod:`.trainer`), its config
(:mod:`.config`), data (:mod:`.data`), network and test pass (:mod:`.model`), several
seeds and evaluating checkpoints (:mod:`.seeds`). Never imports search code."""
from __future__ import annotations

from pcdarts.train.config import TrainConfig, TrainError
from pcdarts.train.trainer import TrainResult, Trainer, train

__all__ = ["TrainConfig", "TrainError", "TrainResult", "Trainer", "train"]
