import pytest

from gochat_streams import topics
from gochat_streams.app import app
from gochat_streams.settings import Settings
from gochat_streams.tables import groups, inbox, presence


@pytest.mark.parametrize(("setting", "replicas", "expected"), [
    (2, 3, 2), (2, 2, 1), (2, 1, 1), (3, 3, 2), (3, 5, 3), (1, 3, 1),
])
def test_min_insync_replicas_is_the_setting_but_leaves_one_replica_to_lose(
        setting: int, replicas: int, expected: int) -> None:
    assert topics.min_insync_replicas(Settings(min_insync_replicas=setting), replicas) == expected


def test_every_topic_of_three_replicas_has_a_min_insync_of_two() -> None:
    s = Settings(namespace="")
    assert {t.name: t.config["min.insync.replicas"] for t in topics.core(s)} == {
        "im-upstream-topic": "2", "im-group-topic": "2", "im-user-topic": "2", "im-task-topic": "2",
        "im-upstream-dlq": "2", "im-task-dlq": "2", "im-alert-topic": "2", "im-audit-topic": "2",
    }
    assert topics.downstream(s, "g1").config["min.insync.replicas"] == "1"


def test_the_tables_changelogs_take_the_min_insync_and_lz4() -> None:
    replicas = app.conf.topic_replication_factor
    expected = {"compression.type": "lz4",
                "min.insync.replicas": str(topics.min_insync_replicas(app.gochat_settings, replicas))}
    for table in (groups, inbox, presence):
        assert table.changelog_topic.config == expected, table.name
        assert table.changelog_topic.compacting  # Faust's own cleanup.policy stays
