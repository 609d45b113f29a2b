import math

import pytest

from dn_cli.schedule import apply_only, last_neighbour, rows_in_flight, single_pass, two_pass

GRIDS = [(1, 1), (1, 7), (6, 1), (5, 6), (4, 3), (9, 20)]


def neighbours(index, rows, cols):
    row, col = divmod(index, cols)
    return [
        r * cols + c
        for r in range(row - 1, row + 2)
        for c in range(col - 1, col + 2)
        if 0 <= r < rows and 0 <= c < cols
    ]


@pytest.mark.parametrize("rows,cols", GRIDS)
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_single_pass_collects_before_applying_and_keeps_a_bounded_queue(rows, cols, batch):
    collected, applied, most_pending = [], [], 0
    for step in single_pass(rows, cols, batch):
        assert 1 <= len(step.tiles) <= batch
        if step.kind == "collect":
            collected += step.tiles
        else:
            for t in step.tiles:
                assert set(neighbours(t, rows, cols)) <= set(collected)
            applied += step.tiles
        most_pending = max(most_pending, len(collected) - len(applied))
    n = rows * cols
    assert collected == list(range(n)) and applied == list(range(n))  # each once, raster order
    assert most_pending <= cols + 2 * batch


@pytest.mark.parametrize("rows,cols", GRIDS)
@pytest.mark.parametrize("batch", [1, 4, 16])
def test_moment_rows_in_flight_depend_on_width_and_batch_only(rows, cols, batch):
    assert rows_in_flight(single_pass(rows, cols, batch), cols) <= 3 + math.ceil(2 * batch / cols)
    assert rows_in_flight(single_pass(200, cols, batch), cols) == rows_in_flight(single_pass(40, cols, batch), cols)


def test_two_pass_collects_everything_first():
    steps = two_pass(3, 4, 5)
    kinds = [s.kind for s in steps]
    assert kinds == ["collect"] * 3 + ["apply"] * 3
    assert rows_in_flight(steps, 4) == 4


def test_last_neighbour_and_apply_only():
    assert last_neighbour(0, 3, 4) == 5
    assert last_neighbour(11, 3, 4) == 11
    assert [list(s.tiles) for s in apply_only(2, 2, 3)] == [[0, 1, 2], [3]]
