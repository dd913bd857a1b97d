import pytest

from algokit.intervals import gaps, intersect, merge, total_length


def test_merge_overlapping_and_touching():
    assert merge([(5, 7), (1, 3), (2, 4), (8, 9), (12, 15)]) == [(1, 9), (12, 15)]


def test_merge_nested():
    assert merge([(1, 10), (2, 3)]) == [(1, 10)]


def test_merge_rejects_bad_interval():
    with pytest.raises(ValueError):
        merge([(3, 1)])


def test_total_length():
    assert total_length([(1, 3), (2, 5), (10, 10)]) == 6
    assert total_length([]) == 0


@pytest.mark.parametrize("a,b,common", [((1, 5), (3, 9), (3, 5)), ((1, 2), (3, 4), None),
                                        ((1, 3), (3, 4), (3, 3)), ((2, 8), (4, 5), (4, 5))])
def test_intersect(a, b, common):
    assert intersect(a, b) == common


def test_gaps():
    assert gaps([(3, 4), (7, 8)], 1, 10) == [(1, 2), (5, 6), (9, 10)]
    assert gaps([(0, 20)], 1, 10) == []
    assert gaps([], 1, 3) == [(1, 3)]
    assert gaps([(15, 20)], 1, 3) == [(1, 3)]
