"""Models against every JSON example of the spec, and against bad input."""

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gochat_streams.codecs import DecodeError, decode_task, decode_upstream, decode_user_event
from gochat_streams.models import (
    CLIENT_FRAME_ADAPTER,
    Ack,
    TASK_ADAPTER,
    Delivery,
    DownstreamMessage,
    GroupFanoutPayload,
    MembershipChange,
    MessageBody,
    OfflinePushPayload,
    PersistMessagePayload,
    SendFrame,
    UpstreamMessage,
)

EXAMPLES = json.loads((Path(__file__).parent / "spec_examples.json").read_text())
LIMIT = 10_000


def test_upstream_example_round_trips() -> None:
    message = UpstreamMessage.model_validate_json(json.dumps(EXAMPLES["upstream"]))
    assert json.loads(message.model_dump_json()) == EXAMPLES["upstream"]


def test_downstream_example_round_trips() -> None:
    message = DownstreamMessage.model_validate_json(json.dumps(EXAMPLES["downstream"]))
    assert json.loads(message.model_dump_json()) == EXAMPLES["downstream"]


def test_upstream_becomes_the_downstream_example() -> None:
    message = UpstreamMessage.model_validate(EXAMPLES["upstream"])
    assert json.loads(message.to_downstream().model_dump_json()) == EXAMPLES["downstream"]


def test_task_example_round_trips() -> None:
    task = TASK_ADAPTER.validate_json(json.dumps(EXAMPLES["task"]))
    # exclude_unset: fields added to the spec's (payload timestamp, fan-out batch) stay out.
    assert json.loads(TASK_ADAPTER.dump_json(task, exclude_unset=True)) == EXAMPLES["task"]


@pytest.mark.parametrize(
    "name", ["text", "image", "file", "location", "system_conversation", "system_group"]
)
def test_message_type_examples_round_trip(name: str) -> None:
    body = MessageBody.model_validate(EXAMPLES[name])
    assert body.message_type == name
    assert json.loads(body.model_dump_json()) == EXAMPLES[name]


@pytest.mark.parametrize(
    ("name", "payload_model"),
    [("persist_message", PersistMessagePayload), ("offline_push", OfflinePushPayload),
     ("group_fanout", GroupFanoutPayload)],
)
def test_task_type_examples_round_trip(name: str, payload_model: type) -> None:
    example = EXAMPLES[name]
    assert example["task_type"] == name
    task = TASK_ADAPTER.validate_python(
        {**example, "task_id": "task_1", "timestamp": 1640995200000}
    )
    assert isinstance(task.payload, payload_model)
    assert json.loads(task.payload.model_dump_json(exclude_unset=True)) == example["payload"]


def _upstream(**changes: object) -> bytes:
    return json.dumps({**EXAMPLES["upstream"], **changes}).encode()


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b"{not json", "malformed_json", ""),
        (b"\xff\xfe\x00", "malformed_json", ""),
        (_upstream(message_type="video"), "unknown_type", "message_type"),
        (_upstream(timestamp="yesterday"), "invalid_schema", "timestamp"),
        (_upstream(version="2.0"), "invalid_schema", "version"),
        (_upstream(surprise=1), "invalid_schema", "surprise"),
        (_upstream(from_user_id="bad id with spaces"), "invalid_schema", "from_user_id"),
        # A user id never holds ":": a single chat's id, "a:b", must name exactly one pair.
        (_upstream(from_user_id="alice:bob"), "invalid_schema", "from_user_id"),
        (_upstream(to_user_id="alice:bob"), "invalid_schema", "to_user_id"),
        (_upstream(message_type="system_group", metadata={"action": "invite", "group_id": "g", "invitee_id": "a:b"}),
         "invalid_schema", "invitee_id"),
        (_upstream(message_type="location", metadata={"latitude": 91, "longitude": 0}), "invalid_schema", "latitude"),
        (_upstream(message_type="file", metadata={}), "missing_field", "filename"),
        (_upstream(content="x" * (LIMIT + 1)), "oversize", "content"),
        (_upstream(content="a\x00b"), "invalid_schema", "NUL"),
        (_upstream(metadata={"note": ["ok", "a\x00b"]}), "invalid_schema", "NUL"),
        (b" " * (1024 * 1024 + 1), "oversize", "record"),
    ],
)
def test_bad_upstream_is_a_decode_error_naming_the_problem(raw: bytes, reason: str, field: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_upstream(raw, max_content_chars=LIMIT, max_sealed_chars=LIMIT)
    assert caught.value.reason == reason
    assert field in str(caught.value)


def test_user_ids_of_every_envelope_refuse_the_pair_separator() -> None:
    assert decode_user_event(json.dumps({"kind": "ack", "user_id": "bob", "message_id": "m", "seq": 1}).encode())
    with pytest.raises(DecodeError):
        decode_user_event(json.dumps({"kind": "ack", "user_id": "a:b", "message_id": "m", "seq": 1}).encode())
    with pytest.raises(ValidationError):
        MembershipChange(added=["a:b"])
    # A client may leave a single chat's conversation_id out: the gateway sets it.
    frame = CLIENT_FRAME_ADAPTER.validate_python({"type": "send", "message": {
        "message_id": "m", "to_user_id": "bob", "content": "hi", "message_type": "text"}})
    assert isinstance(frame, SendFrame) and frame.message.conversation_id is None


def test_a_delivery_names_one_or_more_users_and_reads_the_one_user_form_of_before() -> None:
    message = json.loads(json.dumps(EXAMPLES["downstream"]))
    earlier = decode_user_event(json.dumps({"kind": "delivery", "user_id": "bob", "message": message}).encode())
    assert isinstance(earlier, Delivery) and earlier.user_ids == ["bob"]
    group = decode_user_event(json.dumps({"kind": "delivery", "user_ids": ["a", "b"], "message": message}).encode())
    assert isinstance(group, Delivery) and group.user_ids == ["a", "b"]
    for user_ids in ([], ["a:b"]):
        with pytest.raises(DecodeError):
            decode_user_event(json.dumps({"kind": "delivery", "user_ids": user_ids, "message": message}).encode())


def test_an_ack_carries_one_or_more_entries_and_reads_the_one_ack_form_of_before() -> None:
    earlier = decode_user_event(json.dumps({"kind": "ack", "user_id": "bob", "message_id": "m", "seq": 3}).encode())
    assert isinstance(earlier, Ack) and [(a.user_id, a.message_id, a.seq) for a in earlier.entries] == [("bob", "m", 3)]
    for entries in ([], [{"user_id": "bob", "message_id": "m", "seq": 0}]):
        with pytest.raises(DecodeError):
            decode_user_event(json.dumps({"kind": "ack", "entries": entries}).encode())


def test_missing_message_id_is_named() -> None:
    data = {k: v for k, v in EXAMPLES["upstream"].items() if k != "message_id"}
    with pytest.raises(DecodeError) as caught:
        decode_upstream(json.dumps(data).encode(), max_content_chars=LIMIT, max_sealed_chars=LIMIT)
    assert caught.value.reason == "missing_field"
    assert "message_id" in caught.value.detail


def test_unknown_task_type_is_named() -> None:
    raw = json.dumps({**EXAMPLES["task"], "task_type": "send_email"}).encode()
    with pytest.raises(DecodeError) as caught:
        decode_task(raw)
    assert caught.value.reason == "unknown_type"


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_decode_error(raw: bytes) -> None:
    for decoder in (lambda b: decode_upstream(b, max_content_chars=LIMIT, max_sealed_chars=LIMIT), decode_task, decode_user_event):
        try:
            decoder(raw)
        except DecodeError:
            pass


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@given(JSON)
def test_arbitrary_json_raises_only_decode_error(value: object) -> None:
    raw = json.dumps(value).encode()
    for decoder in (lambda b: decode_upstream(b, max_content_chars=LIMIT, max_sealed_chars=LIMIT), decode_task, decode_user_event):
        try:
            decoder(raw)
        except DecodeError:
            pass
