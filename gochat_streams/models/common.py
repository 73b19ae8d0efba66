"""Field types shared by every envelope."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

#: Ids travel in Kafka keys, topic names and URLs: keep them printable and bounded.
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")]
#: A user id is an id without ":": a single chat's conversation id is its two users' ids,
#: sorted and joined by ":", and must name exactly one pair.
UserId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")]
#: Milliseconds since the epoch, as in the spec's ``timestamp`` fields.
TimestampMs = Annotated[int, Field(ge=0)]
Version = Literal["1.0"]

PROTOCOL_VERSION: Version = "1.0"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Model(BaseModel):
    """Base of every envelope: unknown top-level fields are schema errors, not silently kept."""

    model_config = ConfigDict(extra="forbid")
