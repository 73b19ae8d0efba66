"""The logic app's Faust topic objects, made once from the specs in topics.py."""

from __future__ import annotations

from functools import lru_cache

import faust

from . import topics
from .app import app, settings

upstream = topics.faust_topic(app, topics.upstream(settings))
user = topics.faust_topic(app, topics.user(settings))
task = topics.faust_topic(app, topics.task(settings))


@lru_cache(maxsize=4096)
def downstream(gateway_id: str) -> faust.TopicT:
    return topics.faust_topic(app, topics.downstream(settings, gateway_id))
