"""pcdarts.utils: the one mean ± sample std."""
from __future__ import annotations

import math

import pytest

from pcdarts import utils


def test_mean_std_is_the_sample_std_and_undefined_for_one_value():
    # 90, 92: mean 91, deviations -1, +1, sum of squares 2, divided by n - 1 = 1
    assert utils.mean_std([90.0, 92.0]) == (91.0, pytest.approx(math.sqrt(2.0)))
    # 1, 2, 3, 4: sum of squares 5; sample variance 5/3 (the population one would be 5/4)
    assert utils.mean_std([1, 2, 3, 4])[1] == pytest.approx(math.sqrt(5 / 3))
    assert utils.mean_std([90.0]) == (90.0, None)
    assert utils.mean_std([]) == (None, None)
    assert utils.STD_LABEL == "sample std"


def test_format_mean_std():
    assert utils.format_mean_std(91.0, 1.41421) == "91.00 ± 1.41"
    assert utils.format_mean_std(*utils.mean_std([90.0])) == "90.00"
    assert utils.format_mean_std(None, None) == "n/a"
    assert utils.format_mean_std(1.23456, None, digits=3) == "1.235"
