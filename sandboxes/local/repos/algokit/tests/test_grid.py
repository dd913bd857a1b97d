from algokit.grid import count_regions, neighbours, shortest_path, spiral

MAZE = [
    "..#....",
    ".##.##.",
    "...#...",
    "#.....#",
]


def test_neighbours():
    assert sorted(neighbours(MAZE, (0, 0))) == [(0, 1), (1, 0)]
    assert sorted(neighbours(MAZE, (2, 1))) == [(2, 0), (2, 2), (3, 1)]


def test_shortest_path():
    assert shortest_path(MAZE, (0, 0), (0, 6)) == 12
    assert shortest_path(MAZE, (0, 0), (0, 0)) == 0
    assert shortest_path(MAZE, (0, 0), (0, 2)) == -1


def test_shortest_path_blocked():
    assert shortest_path([".#."], (0, 0), (0, 2)) == -1


def test_count_regions():
    assert count_regions(MAZE) == 1
    assert count_regions([".#.", "###", ".#."]) == 4
    assert count_regions(["###"]) == 0


def test_spiral():
    assert spiral([[1, 2, 3], [4, 5, 6], [7, 8, 9]]) == [1, 2, 3, 6, 9, 8, 7, 4, 5]
    assert spiral([[1, 2, 3, 4]]) == [1, 2, 3, 4]
    assert spiral([[1], [2], [3]]) == [1, 2, 3]
    assert spiral([[1, 2], [3, 4], [5, 6]]) == [1, 2, 4, 6, 5, 3]
    assert spiral([]) == []
