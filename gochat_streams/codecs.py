"""Bytes <-> validated models. The only place records are parsed.

Every failure is a :class:`DecodeError` with a ``reason`` from a closed set, so callers
count, report and dead-letter by reason and never see a pydantic or JSON exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal, TypeVar

import orjson
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from .models import (
    ALERT_ADAPTER,
    CLIENT_FRAME_ADAPTER,
    TASK_ADAPTER,
    USER_EVENT_ADAPTER,
    AlertEvent,
    ClientFrame,
    DeadLetter,
    DownstreamMessage,
    Refusal,
    Task,
    UpstreamMessage,
    UserEvent,
)
from .models.common import UserId
from .models.messages import is_sealed

DecodeReason = Literal["malformed_json", "invalid_schema", "unknown_type", "missing_field", "oversize"]

_M = TypeVar("_M")
_UPSTREAM_ADAPTER: TypeAdapter[UpstreamMessage] = TypeAdapter(UpstreamMessage)
_DOWNSTREAM_ADAPTER: TypeAdapter[DownstreamMessage] = TypeAdapter(DownstreamMessage)
_REFUSAL_ADAPTER: TypeAdapter[Refusal] = TypeAdapter(Refusal)
_DEAD_LETTER_ADAPTER: TypeAdapter[DeadLetter] = TypeAdapter(DeadLetter)
#: A downstream record's users and their inbox sequence numbers (topics.DOWNSTREAM_RECIPIENTS).
_RECIPIENTS_ADAPTER: TypeAdapter[dict[str, int]] = TypeAdapter(dict[UserId, Annotated[int, Field(ge=1)]])
#: A record larger than this is refused before it is parsed.
MAX_RECORD_BYTES = 1024 * 1024


class DecodeError(ValueError):
    def __init__(self, reason: DecodeReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: DecodeReason = reason
        self.detail = detail


def _reason(exc: ValidationError) -> DecodeReason:
    errors = exc.errors(include_url=False)
    for err in errors:
        if err["type"] == "json_invalid":
            return "malformed_json"
    for err in errors:
        tag = err["loc"][-1] if err["loc"] else None
        if err["type"] == "union_tag_invalid" or (
            err["type"] == "literal_error" and tag in ("message_type", "task_type", "type", "kind")
        ):
            return "unknown_type"
    if any(err["type"] == "missing" for err in errors):
        return "missing_field"
    return "invalid_schema"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "(record)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def decode(adapter: TypeAdapter[_M], data: bytes | str, *, max_bytes: int = MAX_RECORD_BYTES) -> _M:
    """Parse and validate one JSON record, or raise :class:`DecodeError`."""
    if len(data) > max_bytes:
        raise DecodeError("oversize", f"record is {len(data)} bytes, limit {max_bytes}")
    try:
        return adapter.validate_json(data)
    except ValidationError as exc:
        raise DecodeError(_reason(exc), _describe(exc)) from None


def decode_upstream(data: bytes, *, max_content_chars: int, max_sealed_chars: int) -> UpstreamMessage:
    """``max_sealed_chars``: the longest sealed content (content_crypto.sealed_length), which
    holds the metadata too; it is checked, unread, as a clear one is."""
    message = decode(_UPSTREAM_ADAPTER, data)
    limit = max_sealed_chars if is_sealed(message.message_type, message.content) else max_content_chars
    if len(message.content) > limit:
        raise DecodeError("oversize", f"content is {len(message.content)} characters, limit {limit}")
    return message


def decode_downstream(data: bytes) -> DownstreamMessage:
    return decode(_DOWNSTREAM_ADAPTER, data)


def decode_recipients(data: bytes) -> dict[str, int]:
    return decode(_RECIPIENTS_ADAPTER, data)


def encode_recipients(seqs: Mapping[str, int]) -> bytes:
    return orjson.dumps(dict(seqs))


def decode_refusal(data: bytes) -> Refusal:
    return decode(_REFUSAL_ADAPTER, data)


def decode_dead_letter(data: bytes, *, max_bytes: int = MAX_RECORD_BYTES) -> DeadLetter:
    """``max_bytes``: the producers' largest request, which letters are sized to (deadletters.py)."""
    return decode(_DEAD_LETTER_ADAPTER, data, max_bytes=max_bytes)


def decode_alert(data: bytes) -> AlertEvent:
    return decode(ALERT_ADAPTER, data)


def decode_client_frame(data: str | bytes, *, max_bytes: int) -> ClientFrame:
    return decode(CLIENT_FRAME_ADAPTER, data, max_bytes=max_bytes)


def decode_user_event(data: bytes) -> UserEvent:
    return decode(USER_EVENT_ADAPTER, data)


def decode_task(data: bytes) -> Task:
    return decode(TASK_ADAPTER, data)


def encode(model: BaseModel) -> bytes:
    return model.__pydantic_serializer__.to_json(model)  # model_dump_json's bytes, before it makes them a str
