"""Pydantic models of the spec's envelopes. Agents only ever see these, validated."""

from .common import PROTOCOL_VERSION, now_ms
from .deadletters import ALERT_ADAPTER, Alert, AlertEvent, DeadLetter, RuleAlert
from .frames import CLIENT_FRAME_ADAPTER, AckFrame, ClientFrame, ClientMessage, ErrorCode, Refusal, RefusalCode, SendFrame
from .messages import (
    METADATA_MODELS,
    USER_MESSAGE_TYPES,
    DownstreamMessage,
    GroupMetadata,
    MessageBody,
    MessageType,
    StoredMessage,
    UpstreamMessage,
)
from .tasks import (
    TASK_ADAPTER,
    MembershipChange,
    GroupFanoutPayload,
    GroupFanoutTask,
    OfflinePushPayload,
    OfflinePushTask,
    PersistMessagePayload,
    PersistMessageTask,
    Task,
    TaskType,
)
from .user_events import MAX_ACKS, MAX_DELIVERY_USERS, USER_EVENT_ADAPTER, Ack, Acked, Bounce, Delivery, PresenceChange, UserEvent

__all__ = [
    "ALERT_ADAPTER", "Ack", "Acked", "AckFrame", "Alert", "AlertEvent", "RuleAlert", "Bounce", "CLIENT_FRAME_ADAPTER", "ClientFrame", "ClientMessage", "DeadLetter",
    "Delivery", "MAX_ACKS", "MAX_DELIVERY_USERS",
    "DownstreamMessage", "ErrorCode", "GroupFanoutPayload", "GroupFanoutTask", "GroupMetadata",
    "METADATA_MODELS", "MembershipChange", "MessageBody", "MessageType", "OfflinePushPayload", "OfflinePushTask",
    "PROTOCOL_VERSION", "PersistMessagePayload", "PersistMessageTask", "PresenceChange", "Refusal", "RefusalCode",
    "SendFrame", "StoredMessage", "TASK_ADAPTER", "Task", "TaskType", "USER_EVENT_ADAPTER", "USER_MESSAGE_TYPES",
    "UpstreamMessage", "UserEvent", "now_ms",
]
