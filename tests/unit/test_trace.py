"""Trace sampling: by message id, so every process traces the same messages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gochat_streams import trace

IDS = [f"msg_{i}" for i in range(2_000)]


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    trace.configure(1.0)


def test_rate_one_traces_every_message_and_zero_none() -> None:
    trace.configure(1.0)
    assert all(trace.sampled(i) for i in IDS)
    trace.configure(0.0)
    assert not any(trace.sampled(i) for i in IDS)


def test_a_rate_keeps_about_that_fraction_and_the_same_ids_each_time() -> None:
    trace.configure(0.1)
    first = [i for i in IDS if trace.sampled(i)]
    assert 150 <= len(first) <= 250
    assert [i for i in IDS if trace.sampled(i)] == first


def test_a_lower_rate_keeps_a_subset_of_a_higher_one() -> None:
    trace.configure(0.2)
    wide = {i for i in IDS if trace.sampled(i)}
    trace.configure(0.05)
    narrow = {i for i in IDS if trace.sampled(i)}
    assert narrow and narrow < wide


def test_an_unsampled_message_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    trace.configure(0.0)
    with caplog.at_level("INFO", logger="gochat.trace"):
        trace.hop("logic", "msg_1", topic="t", partition=0, offset=1)
    assert caplog.records == []
    trace.configure(1.0)
    with caplog.at_level("INFO", logger="gochat.trace"):
        trace.hop("logic", "msg_1", topic="t", partition=0, offset=1)
    assert [r.getMessage() for r in caplog.records] == [
        '{"trace":"logic","message_id":"msg_1","topic":"t","partition":0,"offset":1}']
