"""The in-app alert rules, driven with explicit times and windows of seconds."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import replace

import pytest

from gochat_streams.alerting import (
    INPUT_RECORDS,
    CONSUMER_LAG,
    ERRORS,
    UPSTREAM_RECORDS,
    AlertChange,
    Alerting,
    AlertThresholds,
    Observations,
)

# The spec's rules with windows and hold times of seconds.
T = AlertThresholds(
    lag_threshold=100, lag_for_s=10,
    qps_window_s=10, qps_baseline_offset_s=100, qps_drop_ratio=0.5, qps_for_s=20,
    latency_threshold_s=1.0, latency_window_s=10, latency_for_s=0,
    error_rate_threshold=0.1, error_window_s=10, error_for_s=10,
    stale_after_s=30,
)
Feed = Callable[[Observations, int], None]
G1 = {"group": "g", "topic": "t1"}


def drive(feed: Feed, until: int, thresholds: AlertThresholds = T, step: int = 1,
          ) -> tuple[dict[int, list[AlertChange]], Alerting, Observations]:
    """Feed and evaluate at 0, step, ... until; the changes by the time they were returned."""
    alerting, observations = Alerting(thresholds), Observations(thresholds)
    changes = {}
    for t in range(0, until + 1, step):
        feed(observations, t)
        if returned := alerting.evaluate(observations, float(t)):
            changes[t] = returned
    return changes, alerting, observations


def lag(value: Callable[[int], float | None], labels: tuple[str, str] = ("g", "t1")) -> Feed:
    def feed(observations: Observations, t: int) -> None:
        if (v := value(t)) is not None:
            observations.gauge(CONSUMER_LAG, labels, v, t)
    return feed


def counting(name: str, per_s: Callable[[int], float], resets: Collection[int] = ()) -> Feed:
    """A counter growing by ``per_s(t)`` in the second up to t, restarting from 0 at ``resets``."""
    total = 0.0

    def feed(observations: Observations, t: int) -> None:
        nonlocal total
        grown = per_s(t) if t > 0 else 0.0
        total = grown if t in resets else total + grown
        observations.counter(name, total, t)
    return feed


def both(*feeds: Feed) -> Feed:
    def feed(observations: Observations, t: int) -> None:
        for each in feeds:
            each(observations, t)
    return feed


def latencies(slow_per_100: Callable[[int], int], slow: float = 2.0) -> Feed:
    """100 latencies a second, ``slow_per_100(t)`` of them ``slow``, the others 0.1 s."""
    def feed(observations: Observations, t: int) -> None:
        n = slow_per_100(t)
        for seconds in [0.1] * (100 - n) + [slow] * n:
            observations.latency(seconds, t)
    return feed


def errors(per_s: Callable[[int], float]) -> Feed:
    """10 records consumed a second, ``per_s(t)`` errors."""
    return both(counting(INPUT_RECORDS, lambda t: 10), counting(ERRORS, per_s))


# consumer lag

def lag_alert(state: str, value: float, at: float, summary: str, labels: dict[str, str] = G1) -> AlertChange:
    return AlertChange(rule="consumer_lag", labels=labels, state=state, value=value, threshold=100, at=at,
                       summary=summary)


def test_lag_fires_once_after_its_hold_time() -> None:
    changes, alerting, _ = drive(lag(lambda t: 150), 40)
    fired = lag_alert("firing", 150, 10, "lag of g on t1 is 150 records (> 100 for 10 s)")
    assert changes == {10: [fired]}
    assert alerting.firing() == [fired]


def test_lag_at_or_just_below_the_threshold_does_not_fire() -> None:
    assert drive(both(lag(lambda t: 100), lag(lambda t: 99.9, ("g", "t2"))), 60)[0] == {}


def test_lag_resolves_once_after_recovery() -> None:
    changes, alerting, _ = drive(lag(lambda t: 150 if t <= 20 else 50), 60)
    assert changes == {
        10: [lag_alert("firing", 150, 10, "lag of g on t1 is 150 records (> 100 for 10 s)")],
        21: [lag_alert("resolved", 50, 21, "resolved: lag of g on t1 is 50 records (<= 100)")],
    }
    assert alerting.firing() == []


def test_lag_blip_shorter_than_the_hold_time_never_fires() -> None:
    assert drive(lag(lambda t: 150 if t <= 8 else 50), 60)[0] == {}
    # A blip is forgotten: the hold time counts again from the next breach (20), not from the blip (0).
    changes, _, _ = drive(lag(lambda t: 150 if t <= 8 or t >= 20 else 50), 60)
    assert changes == {30: [lag_alert("firing", 150, 30, "lag of g on t1 is 150 records (> 100 for 10 s)")]}


def test_lag_series_fire_and_resolve_independently() -> None:
    t2 = {"group": "g", "topic": "t2"}
    changes, alerting, _ = drive(both(lag(lambda t: 150 if t <= 20 else 50),
                                      lag(lambda t: 150 if t >= 5 else 50, ("g", "t2"))), 40)
    fired_t2 = lag_alert("firing", 150, 15, "lag of g on t2 is 150 records (> 100 for 10 s)", t2)
    assert changes == {
        10: [lag_alert("firing", 150, 10, "lag of g on t1 is 150 records (> 100 for 10 s)")],
        15: [fired_t2],
        21: [lag_alert("resolved", 50, 21, "resolved: lag of g on t1 is 50 records (<= 100)")],
    }
    assert alerting.firing() == [fired_t2]


def test_lag_series_no_longer_sampled_resolves_once_stale() -> None:
    changes, alerting, _ = drive(lag(lambda t: 150 + t if t <= 20 else None), 80)
    assert changes == {
        10: [lag_alert("firing", 160, 10, "lag of g on t1 is 160 records (> 100 for 10 s)")],
        51: [lag_alert("resolved", 170, 51, "resolved: no data for lag of g on t1")],  # last sampled at 20
    }
    assert alerting.firing() == []


def test_firing_lists_the_latest_value_and_when_it_started() -> None:
    _, alerting, _ = drive(lag(lambda t: 100 + t), 30)
    assert alerting.firing() == [lag_alert("firing", 130, 11, "lag of g on t1 is 130 records (> 100 for 10 s)")]


def test_defaults_are_the_specs() -> None:
    spec = AlertThresholds(lag_threshold=1000, lag_for_s=300, qps_window_s=300, qps_baseline_offset_s=86400,
                           qps_drop_ratio=0.5, qps_for_s=600, latency_threshold_s=5.0, latency_window_s=300,
                           latency_for_s=0, error_rate_threshold=0.01, error_window_s=300, error_for_s=300)
    assert AlertThresholds() == spec
    changes, _, _ = drive(lag(lambda t: 1500, ("im-logic-group", "im-upstream-topic")), 600, AlertThresholds(), 15)
    assert changes == {300: [AlertChange(
        rule="consumer_lag", labels={"group": "im-logic-group", "topic": "im-upstream-topic"}, state="firing",
        value=1500, threshold=1000, at=300, summary="lag of im-logic-group on im-upstream-topic is 1500 records "
                                                    "(> 1000 for 300 s)")]}


def test_thresholds_reject_empty_windows_and_negative_hold_times() -> None:
    with pytest.raises(ValueError, match="qps_window_s"):
        AlertThresholds(qps_window_s=0)
    with pytest.raises(ValueError, match="lag_for_s"):
        AlertThresholds(lag_for_s=-1)


# throughput drop: 10/s, then less from 120 on; the baseline is 100 s earlier

def upstream(per_s: Callable[[int], float], resets: Collection[int] = ()) -> Feed:
    return counting(UPSTREAM_RECORDS, per_s, resets)


def throughput_alert(state: str, value: float, at: float, summary: str) -> AlertChange:
    return AlertChange(rule="throughput_drop", labels={}, state=state, value=value, threshold=0.5, at=at,
                       summary=summary)


FIRED_AT_149 = throughput_alert("firing", 0.4, 149, "upstream throughput is 4/s, 40% of the 10/s 100 s earlier "
                                                    "(< 50% for 20 s)")


def test_throughput_drop_fires_once_after_its_hold_time() -> None:
    # Below half of the baseline from 129 (9 of the last 10 s at 4/s), held 20 s.
    changes, alerting, _ = drive(upstream(lambda t: 10 if t <= 120 else 4), 200)
    assert changes == {149: [FIRED_AT_149]}
    assert alerting.firing() == [FIRED_AT_149]


def test_throughput_at_the_drop_ratio_does_not_fire() -> None:
    assert drive(upstream(lambda t: 10 if t <= 120 else 5), 200)[0] == {}


def test_throughput_drop_resolves_once_after_recovery() -> None:
    changes, _, _ = drive(upstream(lambda t: 4 if 120 < t <= 170 else 10), 200)
    resolved = throughput_alert("resolved", pytest.approx(0.52), 172,
                                "resolved: upstream throughput is 5.2/s, 52% of the 10/s 100 s earlier (>= 50%)")
    assert changes == {149: [FIRED_AT_149], 172: [resolved]}


def test_throughput_blip_shorter_than_the_hold_time_never_fires() -> None:
    # Silent from 121 to 135: below half from 126 to 139, 14 s.
    assert drive(upstream(lambda t: 0 if 120 < t <= 135 else 10), 200)[0] == {}


def test_throughput_is_silent_until_samples_reach_back_to_the_baseline() -> None:
    # Nothing comes in from 70 on, but a baseline, (0, 10], exists only from 110: firing 20 s later.
    changes, _, _ = drive(upstream(lambda t: 10 if t <= 60 else 0), 140)
    assert changes == {130: [throughput_alert("firing", 0.0, 130, "upstream throughput is 0/s, 0% of the 10/s "
                                                                  "100 s earlier (< 50% for 20 s)")]}


def test_throughput_is_silent_with_a_zero_baseline() -> None:
    changes, _, observations = drive(upstream(lambda t: 0), 200)
    assert changes == {}
    assert observations.rate(UPSTREAM_RECORDS, 200 - 110, 200 - 100) == 0.0


def test_counter_reset_counts_from_zero() -> None:
    observations = Observations(T)
    for at, total in enumerate([100, 150, 20, 50]):
        observations.counter(UPSTREAM_RECORDS, total, at)
    assert observations.increase(UPSTREAM_RECORDS, 0, 3) == (50 + 20 + 30, 3)
    assert observations.increase(UPSTREAM_RECORDS, 1, 2) == (20, 1)
    # A restarted service's counter is no drop in throughput (nor, unhandled, a negative rate).
    assert drive(upstream(lambda t: 10, resets={125, 160}), 200)[0] == {}


# e2e latency: no hold time

def latency_alert(state: str, value: float, at: float, summary: str) -> AlertChange:
    return AlertChange(rule="e2e_latency", labels={}, state=state, value=value, threshold=1.0, at=at, summary=summary)


LATENCY_FIRED_AT_5 = latency_alert("firing", 2.0, 5, "p99 end-to-end latency over the last 10 s is 2 s (> 1 s)")


def test_latency_fires_at_once_and_once() -> None:
    # 50 slow of the 600 in the window at 5.
    changes, alerting, _ = drive(latencies(lambda t: 50 if t >= 5 else 0), 30)
    assert changes == {5: [LATENCY_FIRED_AT_5]}
    assert alerting.firing() == [LATENCY_FIRED_AT_5]


def test_latency_at_the_threshold_or_one_percent_slow_does_not_fire() -> None:
    assert drive(latencies(lambda t: 1), 30)[0] == {}
    assert drive(latencies(lambda t: 100, slow=1.0), 30)[0] == {}


def test_latency_resolves_once_the_slow_ones_leave_the_window() -> None:
    changes, _, _ = drive(latencies(lambda t: 50 if 5 <= t <= 8 else 0), 40)
    assert changes == {
        5: [LATENCY_FIRED_AT_5],
        18: [latency_alert("resolved", 0.1, 18, "resolved: p99 end-to-end latency over the last 10 s is 0.1 s "
                                                "(<= 1 s)")],
    }


def test_latency_blip_shorter_than_a_hold_time_never_fires() -> None:
    held = replace(T, latency_for_s=15)
    assert drive(latencies(lambda t: 50 if t == 5 else 0), 40, held)[0] == {}  # slow p99 from 5 to 14
    changes, _, _ = drive(latencies(lambda t: 50 if 5 <= t <= 11 else 0), 40, held)  # from 5 to 20
    assert changes == {
        20: [latency_alert("firing", 2.0, 20, "p99 end-to-end latency over the last 10 s is 2 s (> 1 s for 15 s)")],
        21: [latency_alert("resolved", 0.1, 21, "resolved: p99 end-to-end latency over the last 10 s is 0.1 s "
                                                "(<= 1 s)")],
    }


# error rate: 10 records consumed a second

def error_alert(state: str, value: float, at: float, summary: str) -> AlertChange:
    return AlertChange(rule="error_rate", labels={}, state=state, value=value, threshold=0.1, at=at, summary=summary)


ERRORS_FIRED_AT_36 = error_alert("firing", 0.2, 36, "error rate over the last 10 s is 20%, 20 errors in 100 consumed "
                                                    "(> 10% for 10 s)")


def test_error_rate_fires_once_after_its_hold_time() -> None:
    # 2 errors a second from 21: above 10% from 26 (12 in 100).
    changes, alerting, _ = drive(errors(lambda t: 2 if t > 20 else 0), 60)
    assert changes == {36: [ERRORS_FIRED_AT_36]}
    assert alerting.firing() == [ERRORS_FIRED_AT_36]


def test_error_rate_at_the_threshold_does_not_fire() -> None:
    assert drive(errors(lambda t: 1), 60)[0] == {}


def test_error_rate_resolves_once_after_recovery() -> None:
    changes, alerting, _ = drive(errors(lambda t: 2 if 20 < t <= 50 else 0), 80)
    assert changes == {
        36: [ERRORS_FIRED_AT_36],
        55: [error_alert("resolved", 0.1, 55, "resolved: error rate over the last 10 s is 10%, 10 errors in 100 "
                                              "consumed (<= 10%)")],
    }
    assert alerting.firing() == []


def test_error_rate_blip_shorter_than_the_hold_time_never_fires() -> None:
    # 20 errors at 21 only: 20% while 21 is in the window, from 21 to 30.
    assert drive(errors(lambda t: 20 if t == 21 else 0), 60)[0] == {}


def test_error_rate_is_silent_without_records_consumed() -> None:
    assert drive(both(counting(INPUT_RECORDS, lambda t: 0), counting(ERRORS, lambda t: 5)), 60)[0] == {}


def test_error_rate_right_after_a_start_is_measured_over_the_samples_there_are() -> None:
    changes, _, _ = drive(errors(lambda t: 2), 30)
    assert changes == {11: [error_alert("firing", 0.2, 11, "error rate over the last 10 s is 20%, 20 errors in 100 "
                                                           "consumed (> 10% for 10 s)")]}


# memory

def test_observations_forget_what_no_rule_needs() -> None:
    observations = Observations(T)
    for t in range(1000):
        for at in (t, t + 0.25, t + 0.5, t + 0.75):  # 4 samples a second, kept at most 1 a second
            observations.counter(UPSTREAM_RECORDS, 4 * at, at)
            observations.counter(ERRORS, 0, at)
            observations.latency(0.1, at)
            observations.gauge(CONSUMER_LAG, ("g", "t1"), 5, at)
        if t < 10:
            observations.gauge(CONSUMER_LAG, ("g", "gone"), 5, t)
    # upstream_consumed: 889.75 to 999.75 (baseline offset + window, from the sample at the cutoff), one a second;
    # errors: 989.75 to 999.75; latencies: 989.75 to 999.75, four a second; one lag series, the other went stale.
    assert observations.size() == 111 + 11 + 41 + 1
    assert observations.rate(UPSTREAM_RECORDS, 999.75 - 110, 999.75 - 100) == 4.0
    assert observations.gauges(CONSUMER_LAG, 999.75) == {("g", "t1"): 5}


def test_latencies_kept_are_capped_dropping_the_oldest() -> None:
    observations = Observations(T, max_latencies=50)
    for seconds in range(200):
        observations.latency(seconds, 0)
    assert observations.size() == 50
    assert observations.latency_quantile(0.01, -1, 0) == 150
    assert observations.latency_quantile(0.99, -1, 0) == 199
