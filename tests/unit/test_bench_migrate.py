"""bench/migrate.py's arithmetic: the downtime a client saw, and the load redis-benchmark kept up."""

from __future__ import annotations

from bench.migrate import load_rate, seen_downtime_ms


def test_the_longest_gap_while_the_move_ran_is_the_downtime() -> None:
    answers = [0.0, 0.01, 0.02, 0.5, 0.51, 2.0, 2.01]
    assert seen_downtime_ms(answers, 0.015, 0.3) == 480.0  # 0.02 -> 0.5; the later, bigger gap is after it
    assert seen_downtime_ms(answers, 0.6, 2.5) == 1490.0  # a gap that began before the window ends in it
    assert seen_downtime_ms(answers, 0.515, 0.6) == 1490.0  # the window falls inside one gap
    assert seen_downtime_ms(answers, 3.0, 4.0) is None  # no answer at all around the window: nothing to say


def test_the_load_is_redis_benchmarks_last_overall_rate() -> None:
    text = ("SET: rps=43430.3 (overall: 45365.0) avg_msec=0.071 (overall: 0.068)\r"
            "SET: rps=48412.0 (overall: 45641.6) avg_msec=0.062 (overall: 0.067)\r")
    assert load_rate(text) == 45641.6
    assert load_rate("") is None
