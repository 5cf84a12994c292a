"""The bench's reading of Airflow's turns: events logged together are one turn, whatever its length."""

from __future__ import annotations

from bench.event_turns import turns


def test_events_a_quarter_second_apart_start_a_new_turn_and_a_long_turn_stays_one() -> None:
    # One turn whose lines run 0.6 s (each 0.2 s after the one before), then a second turn 1.1 s later.
    taken = [3.4, 3.6, 3.8, 4.0, 5.1, 5.11]
    assert turns(taken) == [(3.4, 4), (5.1, 2)]


def test_events_before_the_pods_were_told_to_end_are_left_out() -> None:
    assert turns([-0.5, 0.3]) == [(0.3, 1)]
