import pytest

from algokit.search import binary_search, count_in_range, lower_bound, max_subarray

ITEMS = [1, 3, 3, 5, 8, 13, 21]


@pytest.mark.parametrize("target,index", [(1, 0), (5, 3), (21, 6), (8, 4)])
def test_binary_search_finds(target, index):
    assert binary_search(ITEMS, target) == index


@pytest.mark.parametrize("target", [0, 4, 22])
def test_binary_search_missing(target):
    assert binary_search(ITEMS, target) == -1


def test_binary_search_empty():
    assert binary_search([], 3) == -1


@pytest.mark.parametrize("target,index", [(0, 0), (3, 1), (4, 3), (21, 6), (22, 7)])
def test_lower_bound(target, index):
    assert lower_bound(ITEMS, target) == index


def test_count_in_range():
    assert count_in_range(ITEMS, 3, 8) == 4
    assert count_in_range(ITEMS, 9, 12) == 0
    assert count_in_range(ITEMS, 8, 3) == 0
    assert count_in_range(ITEMS, 21, 21) == 1


@pytest.mark.parametrize("items,best", [([1, -2, 3, 4, -1], 7), ([-3, -1, -2], -1), ([5], 5),
                                        ([2, -1, 2, -1, 2], 4)])
def test_max_subarray(items, best):
    assert max_subarray(items) == best


def test_max_subarray_empty():
    with pytest.raises(ValueError):
        max_subarray([])
