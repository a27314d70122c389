"""Box checks and IoU against references computed from pixel masks."""

import numpy as np
import pytest

from clvr.shards.boxes import check_box, iou, scale_box


def _mask(box, side=64):
    x, y, w, h = box
    m = np.zeros((side, side), bool)
    m[y:y + h, x:x + w] = True
    return m


@pytest.mark.parametrize("a,b", [((0, 0, 10, 10), (5, 5, 10, 10)), ((3, 4, 20, 7), (10, 1, 5, 30)),
                                 ((0, 0, 8, 8), (20, 20, 4, 4)), ((2, 2, 30, 30), (2, 2, 30, 30))])
def test_iou_equals_mask_overlap(a, b):
    ma, mb = _mask(a), _mask(b)
    ref = np.float64((ma & mb).sum()) / np.float64((ma | mb).sum())
    assert iou(a, b) == pytest.approx(ref, abs=1e-12)


def test_check_box_rejects_clips_and_keeps():
    assert check_box([1, 2, 3, 4], 10, 10) == ([1.0, 2.0, 3.0, 4.0], None)
    clipped, note = check_box([-2, 5, 6, 10], 10, 10)
    assert clipped == [0.0, 5.0, 4.0, 5.0] and "clipped" in note
    for bad, word in [([0, 0, 0, 5], "degenerate"), ([0, 0, float("nan"), 5], "non-finite"),
                      ([20, 20, 5, 5], "outside"), ([9.5, 0, 5, 5], "outside"), (["a", 0, 1, 1], "malformed")]:
        box, note = check_box(bad, 10, 10)
        assert box is None and word in note


def test_scale_box():
    assert scale_box([2, 4, 6, 8], 0.5, 2.0) == [1.0, 8.0, 3.0, 16.0]
