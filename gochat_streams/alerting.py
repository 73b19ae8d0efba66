"""The spec's four alert rules, evaluated inside the app for deployments without Prometheus.

The rules (spec, monitoring section), with :class:`AlertThresholds`' defaults:

* ``consumer_lag``: the lag of a (group, topic) above 1000 records, held for 5 min;
* ``throughput_drop``: upstream messages/s over the last 5 min below half the rate of the
  same 5 min a day earlier, held for 10 min;
* ``e2e_latency``: the p99 of the end-to-end latencies observed over the last 5 min above 5 s;
* ``error_rate``: errors / consumed over the last 5 min above 1 %, held for 5 min.

The same four rules exist as Prometheus rules in ``deploy/prometheus/alerts.yml``; change
both together. One difference: Prometheus takes the p99 from histogram buckets, this module
from the observations themselves (nearest rank). This module only decides. The caller samples the metrics into an
:class:`Observations`, calls :meth:`Alerting.evaluate` periodically and publishes each
:class:`AlertChange` it returns (an event on the alert topic and a log line).

It does no I/O and reads no clock: every time is passed in as float seconds, so tests use
windows and hold times of seconds and explicit timestamps instead of sleeping.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Literal, NamedTuple

Rule = Literal["consumer_lag", "throughput_drop", "e2e_latency", "error_rate"]
State = Literal["firing", "resolved"]

# The samples the rules read, as recorded by the caller, and what alerts.yml reads for them.
CONSUMER_LAG = "consumer_lag"  # gauge, labels (group, topic): sum by (group, topic) (gochat_consumer_lag)
UPSTREAM_RECORDS = "upstream_records"  # counter: gochat_topic_records{topic="im-upstream-topic"}
INPUT_RECORDS = "input_records"  # counter: gochat_topic_records of im-upstream-topic and im-task-topic
ERRORS = "errors"  # counter: gochat_topic_records of the dead-letter topics
LAG_LABELS = ("group", "topic")


@dataclass(frozen=True)
class AlertThresholds:
    """Thresholds, windows and hold times (``*_for_s``) of the rules; durations in seconds."""

    lag_threshold: float = 1000
    lag_for_s: float = 300
    qps_window_s: float = 300
    qps_baseline_offset_s: float = 86400
    qps_drop_ratio: float = 0.5
    qps_for_s: float = 600
    latency_threshold_s: float = 5.0
    latency_window_s: float = 300
    latency_for_s: float = 0
    error_rate_threshold: float = 0.01
    error_window_s: float = 300
    error_for_s: float = 300
    # A lag series not sampled for this long is gone (Prometheus's 5 min lookback), so a
    # deleted group's alert resolves instead of firing forever on its last value.
    stale_after_s: float = 300

    def __post_init__(self) -> None:
        for name in ("qps_window_s", "qps_baseline_offset_s", "latency_window_s", "error_window_s", "stale_after_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("lag_for_s", "qps_for_s", "latency_for_s", "error_for_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")


class _Sample(NamedTuple):
    at: float
    value: float


_at = attrgetter("at")


class _Counter:
    __slots__ = ("samples", "last_total", "lost")

    def __init__(self) -> None:
        self.samples: deque[_Sample] = deque()  # cumulative totals, corrected for resets
        self.last_total: float | None = None  # as reported, to spot a reset
        self.lost = 0.0  # what resets took away, added back to every later total


class Observations:
    """Recent samples of the metrics the rules read, kept only as long as a rule needs them.

    Memory is bounded: one sample per gauge series (a series not sampled for
    ``stale_after_s`` is dropped); per counter, at most one sample per ``counter_resolution_s``
    (a later one in the same slot replaces the earlier) over its retention, which is
    ``qps_baseline_offset_s + qps_window_s`` for ``upstream_consumed`` (at 1 s with the
    defaults: ~86.7k samples, ~10 MB; sampling every 10-15 s needs a tenth of that) and
    ``error_window_s`` for ``errors`` and ``consumed``; latencies over ``latency_window_s``,
    at most ``max_latencies`` of them, the oldest dropped first.

    Times of a counter or gauge series must not go backwards: an older sample than the last
    one is ignored. A counter that goes down was reset (restarted from 0), as in Prometheus.
    """

    def __init__(self, thresholds: AlertThresholds = AlertThresholds(), *, counter_resolution_s: float = 1.0,
                 max_latencies: int = 100_000) -> None:
        if not counter_resolution_s > 0 or max_latencies < 1:
            raise ValueError("counter_resolution_s must be > 0 and max_latencies >= 1")
        self.thresholds = thresholds
        self._resolution = counter_resolution_s
        baseline = thresholds.qps_baseline_offset_s + thresholds.qps_window_s
        self._retention = {UPSTREAM_RECORDS: baseline, ERRORS: thresholds.error_window_s,
                           INPUT_RECORDS: thresholds.error_window_s}
        self._longest = max(baseline, thresholds.error_window_s)  # for a counter no rule reads
        self._gauges: dict[str, dict[tuple[str, ...], _Sample]] = {}
        self._counters: dict[str, _Counter] = {}
        self._latencies: deque[_Sample] = deque(maxlen=max_latencies)

    def gauge(self, name: str, labels: tuple[str, ...], value: float, at: float) -> None:
        """Record the value of a gauge series (e.g. ``consumer_lag`` of (group, topic)) at ``at``."""
        series = self._gauges.setdefault(name, {})
        last = series.get(labels)
        if last is not None and at < last.at:
            return
        series[labels] = _Sample(at, value)
        cutoff = at - self.thresholds.stale_after_s
        for stale in [key for key, sample in series.items() if sample.at < cutoff]:
            del series[stale]

    def counter(self, name: str, total: float, at: float) -> None:
        """Record the cumulative total of a counter at ``at``."""
        counter = self._counters.setdefault(name, _Counter())
        samples = counter.samples
        if samples and at < samples[-1].at:
            return
        if counter.last_total is not None and total < counter.last_total:
            counter.lost += counter.last_total
        counter.last_total = total
        sample = _Sample(at, total + counter.lost)
        if samples and at // self._resolution == samples[-1].at // self._resolution:
            samples[-1] = sample
        else:
            samples.append(sample)
        # Keep the last sample at or before the cutoff: a window starting there needs it.
        cutoff = at - self._retention.get(name, self._longest)
        while len(samples) > 1 and samples[1].at <= cutoff:
            samples.popleft()

    def latency(self, seconds: float, at: float) -> None:
        """Record one end-to-end latency observation, observed at ``at``."""
        self._latencies.append(_Sample(at, seconds))
        cutoff = at - self.thresholds.latency_window_s
        while self._latencies and self._latencies[0].at < cutoff:
            self._latencies.popleft()

    def gauges(self, name: str, now: float) -> dict[tuple[str, ...], float]:
        """The latest value of each series of a gauge sampled within ``stale_after_s`` of ``now``."""
        return {labels: sample.value for labels, sample in self._gauges.get(name, {}).items()
                if now - sample.at <= self.thresholds.stale_after_s}

    def increase(self, name: str, start: float, end: float, *, partial: bool = False) -> tuple[float, float] | None:
        """How much a counter grew over (start, end], and over how many seconds it was measured.

        Measured from the sample at or just before ``start`` to the one at or just before
        ``end``. None when there are no two such samples; with ``partial``, a window the
        samples do not reach back to is measured from the first sample instead.
        """
        counter = self._counters.get(name)
        if counter is None:
            return None
        samples = counter.samples
        last = bisect_right(samples, end, key=_at) - 1
        first = bisect_right(samples, start, key=_at) - 1
        if first < 0 and partial:
            first = 0
        if first < 0 or first >= last:
            return None
        return samples[last].value - samples[first].value, samples[last].at - samples[first].at

    def rate(self, name: str, start: float, end: float, *, partial: bool = False) -> float | None:
        """A counter's increase per second over (start, end], as :meth:`increase` measures it."""
        measured = self.increase(name, start, end, partial=partial)
        return None if measured is None else measured[0] / measured[1]

    def latency_quantile(self, q: float, start: float, end: float) -> float | None:
        """The ``q`` quantile (nearest rank) of the latencies observed in (start, end]; None without any."""
        values = [sample.value for sample in self._latencies if start < sample.at <= end]
        if not values:
            return None
        rank = max(1, math.ceil(round(q * len(values), 9)))  # round: 0.07 * 100 is 7.000000000000001
        return heapq.nlargest(len(values) - rank + 1, values)[-1]

    def size(self) -> int:
        """How many samples are kept, all kinds together."""
        return (sum(len(series) for series in self._gauges.values())
                + sum(len(counter.samples) for counter in self._counters.values()) + len(self._latencies))


@dataclass(frozen=True)
class AlertChange:
    """An alert that started firing or was resolved; ``value`` is what was measured."""

    rule: Rule
    labels: dict[str, str] = field(hash=False)
    state: State
    value: float
    threshold: float
    at: float
    summary: str


_Key = tuple[str, tuple[tuple[str, str], ...]]
_NEGATED = {">": "<=", "<": ">="}


@dataclass(frozen=True)
class _Check:
    """One rule's measurement for one series at one evaluation."""

    rule: Rule
    labels: tuple[tuple[str, str], ...]
    value: float
    threshold: float
    op: Literal[">", "<"]
    for_s: float
    reading: str  # "is 1500 records"
    shown_threshold: str  # "1000"

    @property
    def key(self) -> _Key:
        return self.rule, self.labels

    @property
    def breached(self) -> bool:
        return self.value > self.threshold if self.op == ">" else self.value < self.threshold

    def change(self, state: State, at: float) -> AlertChange:
        subject = _subject(self.rule, self.labels)
        if state == "firing":
            held = f" for {_num(self.for_s)} s" if self.for_s else ""
            summary = f"{subject} {self.reading} ({self.op} {self.shown_threshold}{held})"
        else:
            summary = f"resolved: {subject} {self.reading} ({_NEGATED[self.op]} {self.shown_threshold})"
        return AlertChange(self.rule, dict(self.labels), state, self.value, self.threshold, at, summary)


class Alerting:
    """Evaluates the rules and remembers, per rule and series, since when each has held."""

    def __init__(self, thresholds: AlertThresholds) -> None:
        self.thresholds = thresholds
        self._since: dict[_Key, float] = {}
        self._firing: dict[_Key, AlertChange] = {}

    def evaluate(self, observations: Observations, now: float) -> list[AlertChange]:
        """The alerts that start firing or are resolved at ``now``.

        An alert fires once its condition has held for the rule's hold time; it is resolved
        once its condition no longer holds, or can no longer be measured (its series went
        stale, its samples stopped): then ``value`` is the last value measured. A condition
        that stops before its hold time elapses is forgotten silently.
        """
        changes: list[AlertChange] = []
        measured: set[_Key] = set()
        for check in self._checks(observations, now):
            key = check.key
            measured.add(key)
            if not check.breached:
                self._since.pop(key, None)
                if self._firing.pop(key, None) is not None:
                    changes.append(check.change("resolved", now))
                continue
            since = self._since.setdefault(key, now)
            if key in self._firing:
                # Keep firing() current for the ops page; ``at`` stays when it started firing.
                self._firing[key] = replace(check.change("firing", now), at=self._firing[key].at)
            elif now - since >= check.for_s:
                self._firing[key] = check.change("firing", now)
                changes.append(self._firing[key])
        for key in sorted((self._since.keys() | self._firing.keys()) - measured):
            self._since.pop(key, None)
            gone = self._firing.pop(key, None)
            if gone is not None:
                summary = f"resolved: no data for {_subject(*key)}"
                changes.append(replace(gone, state="resolved", at=now, summary=summary))
        return changes

    def firing(self) -> list[AlertChange]:
        """What is firing now, with the latest measured values and when each started firing."""
        return [self._firing[key] for key in sorted(self._firing)]

    def _checks(self, observations: Observations, now: float) -> list[_Check]:
        t = self.thresholds
        checks = []
        for labels, lag in sorted(observations.gauges(CONSUMER_LAG, now).items()):
            checks.append(_Check("consumer_lag", tuple(zip(LAG_LABELS, labels, strict=True)), lag, t.lag_threshold,
                                 ">", t.lag_for_s, f"is {_num(lag)} records", _num(t.lag_threshold)))

        window, offset = t.qps_window_s, t.qps_baseline_offset_s
        current = observations.rate(UPSTREAM_RECORDS, now - window, now)
        baseline = observations.rate(UPSTREAM_RECORDS, now - offset - window, now - offset)
        if current is not None and baseline is not None and baseline > 0:
            ratio = current / baseline
            reading = f"is {_num(current)}/s, {_pct(ratio)} of the {_num(baseline)}/s {_num(offset)} s earlier"
            checks.append(_Check("throughput_drop", (), ratio, t.qps_drop_ratio, "<", t.qps_for_s, reading,
                                 _pct(t.qps_drop_ratio)))

        p99 = observations.latency_quantile(0.99, now - t.latency_window_s, now)
        if p99 is not None:
            checks.append(_Check("e2e_latency", (), p99, t.latency_threshold_s, ">", t.latency_for_s,
                                 f"over the last {_num(t.latency_window_s)} s is {_num(p99)} s",
                                 f"{_num(t.latency_threshold_s)} s"))

        # partial: right after a start, the rate over the samples there are, as Prometheus's rate() does.
        consumed = observations.increase(INPUT_RECORDS, now - t.error_window_s, now, partial=True)
        if consumed is not None and consumed[0] > 0:
            errors = observations.increase(ERRORS, now - t.error_window_s, now, partial=True)
            failed = 0.0 if errors is None else errors[0]
            ratio = failed / consumed[0]
            reading = (f"over the last {_num(t.error_window_s)} s is {_pct(ratio)}, "
                       f"{_num(failed)} errors in {_num(consumed[0])} consumed")
            checks.append(_Check("error_rate", (), ratio, t.error_rate_threshold, ">", t.error_for_s, reading,
                                 _pct(t.error_rate_threshold)))
        return checks


def _subject(rule: str, labels: tuple[tuple[str, str], ...]) -> str:
    if rule == "consumer_lag":
        named = dict(labels)
        return f"lag of {named['group']} on {named['topic']}"
    return {"throughput_drop": "upstream throughput", "e2e_latency": "p99 end-to-end latency",
            "error_rate": "error rate"}[rule]


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _pct(ratio: float) -> str:
    return f"{_num(ratio * 100)}%"
