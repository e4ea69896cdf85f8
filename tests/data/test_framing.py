"""data/framing.py: the list forms are the specification; the loader's batch forms match them row for row."""

from __future__ import annotations

import numpy as np
import pytest

from data.framing import frame_source, frame_sources, frame_target, frame_targets, pad_rows

PAD, BOS, EOS = 0, 1, 2


def test_known_answers():
    assert frame_source([5, 6, 7], EOS, max_len=8) == [5, 6, 7, EOS]
    assert frame_source([5, 6, 7], EOS, max_len=3) == [5, 6, EOS]  # room for EOS within max_len
    assert frame_target([5, 6, 7], BOS, EOS, max_len=4) == [BOS, 5, 6, EOS]  # room for BOS and EOS
    assert frame_target([], BOS, EOS, max_len=4) == [BOS, EOS]
    assert pad_rows([[5, EOS], [7, 8, EOS]], PAD).tolist() == [[5, EOS, PAD], [7, 8, EOS]]
    assert pad_rows([[5, EOS]], PAD).dtype == np.int64


@pytest.mark.parametrize("rows", [[[5]], [[5, 6, 7], [], [8, 9]], [[3] * 40, [4], [5, 6]]])
def test_batch_forms_equal_the_list_forms(rows):
    lens = np.array([len(r) for r in rows], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    values = np.array([i for r in rows for i in r], dtype=np.int64)
    big = 10**6  # no clipping: the loader's rows were checked against the budget when encoded
    np.testing.assert_array_equal(frame_sources(values, starts, lens, EOS, PAD),
                                  pad_rows([frame_source(r, EOS, big) for r in rows], PAD))
    np.testing.assert_array_equal(frame_targets(values, starts, lens, BOS, EOS, PAD),
                                  pad_rows([frame_target(r, BOS, EOS, big) for r in rows], PAD))
