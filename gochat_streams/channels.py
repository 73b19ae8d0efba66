"""The Faust topic objects of both apps, made once from the specs in topics.py."""

from __future__ import annotations

from functools import lru_cache

import faust

from . import topics
from .app import app, settings, task_app
from .deadletters import DeadLetters

# Logic service
upstream = topics.faust_topic(app, topics.upstream(settings))
group = topics.faust_topic(app, topics.group(settings))
user = topics.faust_topic(app, topics.user(settings))
task = topics.faust_topic(app, topics.task(settings))
logic_dead_letters = DeadLetters("logic", topics.faust_topic(app, topics.upstream_dlq(settings)),
                                 topics.faust_topic(app, topics.alert(settings)), settings)


@lru_cache(maxsize=4096)
def downstream(gateway_id: str) -> faust.TopicT:
    return topics.faust_topic(app, topics.downstream(settings, gateway_id))


# Task service: it consumes the tasks and expands group fan-outs onto im-user-topic.
task_service_tasks = topics.faust_topic(task_app, topics.task(settings))
task_service_user = topics.faust_topic(task_app, topics.user(settings))
task_dead_letters = DeadLetters("task", topics.faust_topic(task_app, topics.task_dlq(settings)),
                                topics.faust_topic(task_app, topics.alert(settings)), settings)

