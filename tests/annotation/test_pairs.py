"""Ranking validation and pair derivation (pure functions)."""

import pytest

from annotation.exceptions import InvalidRanking
from annotation.pairs import normalise_ordering, pairs_from_groups


def test_ties_yield_no_pair_and_margin_is_rank_distance():
    pairs = pairs_from_groups([[3], [1, 2], [4]])
    assert sorted(pairs) == sorted([(3, 1, 1), (3, 2, 1), (3, 4, 2), (1, 4, 1), (2, 4, 1)])


def test_a_single_group_of_ties_gives_no_pairs():
    assert pairs_from_groups([[1, 2, 3, 4]]) == []


def test_a_strict_order_of_k_gives_k_choose_2_pairs():
    assert len(pairs_from_groups([[1], [2], [3], [4]])) == 6


def test_bare_ids_count_as_groups_of_one():
    assert normalise_ordering([2, [1, 3]], [1, 2, 3]) == [[2], [1, 3]]


@pytest.mark.parametrize(
    ("ordering", "message"),
    [
        ([[1], [2]], "leaves out candidates [3]"),
        ([[1], [2], [3], [9]], "candidates [9] are not in this task"),
        ([[1], [1, 2], [3]], "candidates [1] appear more than once"),
        ([[1], [], [2, 3]], "group 2 of the ordering is empty"),
        ([["a"], [2, 3]], "'a', which is not a candidate id"),
        ([[True], [2, 3]], "True, which is not a candidate id"),
        ([], "non-empty list"),
        ("1,2,3", "non-empty list"),
    ],
)
def test_an_ordering_that_is_not_exactly_the_candidates_is_refused_with_a_reason(ordering, message):
    with pytest.raises(InvalidRanking) as err:
        normalise_ordering(ordering, [1, 2, 3])
    assert message in str(err.value)
