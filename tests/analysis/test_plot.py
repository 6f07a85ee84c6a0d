"""Plots whose axes count epochs (or occurrences) tick at whole numbers only."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("matplotlib")


@pytest.fixture
def figures(monkeypatch):
    """Every matplotlib Figure saved during the test, drawn (so its ticks are computed)."""
    from matplotlib.figure import Figure
    saved = []
    original = Figure.savefig

    def keep(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def _whole(ticks) -> bool:
    return len(ticks) > 0 and all(float(t).is_integer() for t in ticks)


def test_arch_weight_plot_ticks_whole_epochs(tmp_path: Path, figures) -> None:
    from pcdarts.analysis.plot import plot_arch_weights
    history = [{"epoch": e, "primitives": ["a", "b"], "arch_weights": {"normal": [[0.5 + 0.1 * e, 0.5 - 0.1 * e]]}}
               for e in range(2)]  # two epochs: the default ticks were 0.0, 0.2, ..., 1.0
    plot_arch_weights(history, tmp_path / "w.png")
    (fig,) = figures
    (ax,) = fig.axes
    assert _whole(ax.get_xticks()) and list(ax.lines[0].get_xdata()) == [1, 2]  # 1-based, as printed


def test_ws_analysis_plots_tick_whole_epochs_and_counts(tmp_path: Path, figures) -> None:
    from pcdarts.analysis.ws_report import plot_report
    names = ["c0", "c1", "c2", "c3"]
    runs = [{"label": "G=1", "seed": 0, "accuracy": [[0.1, 0.4, 0.3, 0.2], [0.2, 0.1, 0.4, 0.3]],
             "epochs": [{"epoch": 1, "kendall_prev_epoch": None}, {"epoch": 2, "kendall_prev_epoch": 0.2}],
             "stability": {"from_epoch": 1}}]
    report = {"ground_truth": {"accuracy": None}, "runs": runs, "settings": [{"setting": "G=1"}],
              "children": names, "space": "tiny", "config": {"bn": "recalibrate"}}
    plot_report(tmp_path, report)
    tau, heatmap, histogram = figures
    assert _whole(tau.axes[0].get_xticks())  # one point at epoch 2: was 1.94, 1.96, ...
    assert _whole(heatmap.axes[0].get_xticks())  # two epoch columns: was 0.5, 1.0, 1.5, ...
    assert _whole(histogram.axes[0].get_yticks())  # counts of top-1 picks


# moved from the issue-8 grab-bag (what a new user hits: nothing on disk lost, nothing misread)

def test_matplotlib_is_a_core_dependency():
    import tomllib
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("matplotlib") for d in deps["dependencies"])
