"""Dead letters: a letter always fits a produce request; writing one is retried, never given up."""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from gochat_streams.codecs import decode_dead_letter, encode
from gochat_streams.deadletters import DeadLetters, dead_letter
from gochat_streams.metrics import dead_letter_write_failures
from gochat_streams.settings import DEFAULT_MAX_REQUEST_BYTES, Settings


def _letter(value: bytes, key: str | None = "alice", max_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> Any:
    letter, _ = dead_letter("logic", "upstream", "im-upstream-topic", 4, 17, key, value, "oversize", "too big", 0,
                            max_bytes=max_bytes)
    return letter


def _request_size(key: str | None, letter: Any) -> int:
    """What aiokafka's producer compares with its max_request_size."""
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(
        key.encode() if key is not None else None, encode(letter), [])


def test_a_record_that_fits_is_copied_whole() -> None:
    letter = _letter(b"\xff not json")
    assert (base64.b64decode(letter.value_b64), letter.value_size, letter.truncated) == (b"\xff not json", 10, False)


@pytest.mark.parametrize("size", [DEFAULT_MAX_REQUEST_BYTES * 3 // 4, DEFAULT_MAX_REQUEST_BYTES, 20 * 1024 * 1024])
def test_a_record_too_big_to_copy_whole_is_copied_truncated_and_the_letter_fits(size: int) -> None:
    value = bytes(range(256)) * (size // 256)
    letter = _letter(value)
    kept = base64.b64decode(letter.value_b64)
    assert letter.truncated and letter.value_size == len(value) and value.startswith(kept)
    assert DEFAULT_MAX_REQUEST_BYTES - 4096 < _request_size("alice", letter) <= DEFAULT_MAX_REQUEST_BYTES
    assert decode_dead_letter(encode(letter)) == letter  # the listing reads it back


def test_a_raised_max_request_size_keeps_more() -> None:
    value = b"x" * (3 * 1024 * 1024)
    letter = _letter(value, max_bytes=8 * 1024 * 1024)
    assert not letter.truncated and base64.b64decode(letter.value_b64) == value
    assert decode_dead_letter(encode(letter), max_bytes=8 * 1024 * 1024) == letter


def test_a_huge_key_is_cut_and_the_letter_marked_truncated() -> None:
    key = "k" * (2 * 1024 * 1024)
    letter = _letter(b"small", key=key)
    assert letter.truncated and key.startswith(letter.key) and len(letter.key) < 2048
    assert _request_size(letter.key, letter) <= DEFAULT_MAX_REQUEST_BYTES


class _FailingTopic:
    """A topic whose producer refuses the first ``failures`` sends."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[tuple[Any, bytes]] = []

    async def send(self, *, key: Any, value: bytes) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("broker unavailable")
        self.sent.append((key, value))

    def get_topic_name(self) -> str:
        return "im-upstream-dlq"


async def test_a_failed_dead_letter_write_is_retried_until_it_succeeds_not_raised() -> None:
    dlq, alerts = _FailingTopic(failures=3), _FailingTopic(failures=1)
    graves = DeadLetters("logic", dlq, alerts, Settings(retry_backoff_s=0))  # type: ignore[arg-type]
    event = SimpleNamespace(message=SimpleNamespace(topic="im-upstream-topic", partition=2, offset=9, key=b"bob",
                                                    value=b"{not json"))
    failures_before = dead_letter_write_failures.labels("logic")._value.get()
    await graves.bury(event, "upstream", "malformed_json", "not JSON")  # type: ignore[arg-type]
    [(key, value)] = dlq.sent
    letter = decode_dead_letter(value)
    assert (key, letter.offset, base64.b64decode(letter.value_b64)) == (b"bob", 9, b"{not json")
    assert len(alerts.sent) == 1
    assert dead_letter_write_failures.labels("logic")._value.get() - failures_before == 4
