"""Commands added to the Faust CLI: ``python -m gochat_streams <command>``."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable

import click
import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faust.cli import option
from redis.asyncio import Redis

from . import acls as broker_acls
from . import topics
from .app import app, settings
from .audit import audit_session, cli_identity, read_records, verify_chains
from .codecs import decode_dead_letter
from .gateway.tokens import InsecureKeyring, issue_token, keyring
from .kafka import producer_kwargs, read_to_end
from .models import DeadLetter

@app.command(option("--ttl", type=int, default=None, help="Seconds until the token expires."),
             faust.cli.argument("user_id"))
async def token(self: faust.cli.AppCommand, user_id: str, ttl: int | None) -> None:
    """Print a gateway token for USER_ID, signed with the gateway's signing key (development use)."""
    try:
        keys = keyring(settings)
    except InsecureKeyring as exc:
        raise SystemExit(f"no token: {exc}") from None
    try:
        print(issue_token(user_id, keys, ttl or settings.token_ttl_s))
    except ValueError:
        raise SystemExit(f"no token: {user_id!r} is not a user id (letters, digits and ._@- only)") from None


@app.command(option("--gateway", "gateway_ids", multiple=True, metavar="GATEWAY_ID",
                    help="Also this gateway's downstream topic (repeatable)."))
async def create_topics(self: faust.cli.AppCommand, gateway_ids: tuple[str, ...]) -> None:
    """Create the spec's topics, the internal ones, the dead-letter, alert and audit topics.

    With ACLs (acls.py) only an admin creates topics: run this as one, with every gateway's id.
    """
    await topics.ensure_topics(settings, [*topics.core(settings),
                                          *(topics.downstream(settings, g) for g in gateway_ids)])


def _principal_names(pairs: tuple[str, ...]) -> dict[broker_acls.Service, str]:
    names: dict[broker_acls.Service, str] = dict(broker_acls.DEFAULT_PRINCIPALS)
    for pair in pairs:
        service, _, name = pair.partition("=")
        if service not in broker_acls.SERVICES or not name:
            raise click.UsageError(f"--principal {pair!r}: SERVICE=NAME, SERVICE one of {', '.join(broker_acls.SERVICES)}")
        names[service] = name  # type: ignore[index]
    return names


@app.command(
    faust.cli.argument("action", type=click.Choice(["plan", "apply"])),
    option("--gateway", "gateway_ids", multiple=True, metavar="GATEWAY_ID",
           help="A gateway whose principal gets its ACLs (repeatable)."),
    option("--principal", "principals", multiple=True, metavar="SERVICE=NAME",
           help="A service's SASL user name instead of the default (gateway: a prefix to its id)."),
)
async def acls(self: faust.cli.AppCommand, action: str, gateway_ids: tuple[str, ...],
                principals: tuple[str, ...]) -> None:
    """plan: print every ACL of each service's principal; apply: create on the broker those it lacks.

    apply runs as the broker's super user (GOCHAT_BROKER_SASL_USERNAME), leaves ACLs already
    there as they are, and is an event of the audit log.
    """
    wanted = broker_acls.plan(settings, gateway_ids, _principal_names(principals))
    if action == "plan":
        for acl in wanted:
            print(acl)
        print(f"{len(wanted)} ACLs")
        return
    operator, source = cli_identity()
    async with audit_session(settings, "cli") as audit_log:
        try:
            created, present = await broker_acls.apply(settings, wanted)
        except (broker_acls.AclError, KafkaError) as exc:
            audit_log.record(operator, "acls.apply", settings.broker_url, "failure", source,
                             broker_user=settings.broker_sasl_username, reason=str(exc))
            raise click.ClickException(f"ACLs not applied: {exc}") from None
        for acl in created:
            print(f"created {acl}")
        audit_log.record(operator, "acls.apply", settings.broker_url, "success", source,
                         broker_user=settings.broker_sasl_username, created=len(created), present=len(present),
                         gateways=list(gateway_ids))
        print(f"{len(created)} ACLs created, {len(present)} already there")


@app.command()
async def gateway(self: faust.cli.AppCommand) -> None:
    """Run the WebSocket gateway (GOCHAT_GATEWAY_ID, GOCHAT_GATEWAY_PORT)."""
    from .gateway.server import run

    await run(settings)


@app.command()
async def monitor(self: faust.cli.AppCommand) -> None:
    """Run the monitor: lag, throughput, alert rules, the ops page (GOCHAT_MONITOR_PORT)."""
    from .monitor import run

    await run(settings)


async def _read_dead_letters(spec: topics.TopicSpec) -> list[tuple[str, DeadLetter]]:
    """Every dead letter on ``spec``'s topic when the command started, as ``("partition:offset", letter)``."""
    return [(f"{r.partition}:{r.offset}", decode_dead_letter(r.value, max_bytes=settings.producer_max_request_bytes))
            for r in await read_to_end(settings, spec.name)]


@app.command(
    option("--service", type=click.Choice(["logic", "task"]), default="logic", show_default=True,
           help="im-upstream-dlq (logic) or im-task-dlq (task)."),
    option("--replay", multiple=True, metavar="PARTITION:OFFSET",
           help="Send this dead letter's original record back to its source topic (repeatable)."),
)
async def dead_letters(self: faust.cli.AppCommand, service: str, replay: tuple[str, ...]) -> None:
    """List dead letters as JSON lines, or replay chosen ones to their source topics."""
    spec = topics.upstream_dlq(settings) if service == "logic" else topics.task_dlq(settings)
    letters = await _read_dead_letters(spec)
    if not replay:
        for position, letter in letters:
            print(json.dumps({"position": position, **letter.model_dump(exclude={"value_b64"})}, ensure_ascii=False))
        return
    chosen = dict(letters)
    unknown = [p for p in replay if p not in chosen]
    if unknown:
        raise click.UsageError(f"no dead letter at {', '.join(unknown)} on {spec.name}")
    if truncated := [p for p in replay if chosen[p].truncated]:
        raise click.ClickException(
            f"not replayed: the dead letters at {', '.join(truncated)} on {spec.name} are truncated (the record "
            "was too big to copy whole), so they are not the original records; nothing was sent")
    producer = AIOKafkaProducer(**producer_kwargs(settings))
    await producer.start()
    operator, source = cli_identity()
    try:
        async with audit_session(settings, "cli") as audit_log:
            sends = [
                await producer.send(letter.source_topic, base64.b64decode(letter.value_b64),
                                    key=letter.key.encode() if letter.key is not None else None)
                for letter in (chosen[p] for p in replay)
            ]
            for position, sent in zip(replay, await asyncio.gather(*sends)):
                print(f"replayed {position} to {sent.topic}[{sent.partition}]@{sent.offset}")
                audit_log.record(operator, "dead_letter.replay", f"{spec.name}@{position}", "success", source,
                                 to=f"{sent.topic}[{sent.partition}]@{sent.offset}", reason=chosen[position].reason)
    finally:
        await producer.stop()


@app.command(
    faust.cli.argument("action", type=click.Choice(["verify"])),
    option("--topic", default=None, help="The topic to check (default: the settings' im-audit-topic)."),
)
async def audit(self: faust.cli.AppCommand, action: str, topic: str | None) -> None:
    """verify: check every audit chain on im-audit-topic; print each chain's first broken link, exit 1 if any."""
    name = topic or topics.audit(settings).name
    records = await read_records(settings, name)
    result = verify_chains(records)
    for chain in sorted(result.chains, key=lambda c: c.producer):
        state = "ok    " if chain.broken is None else "BROKEN"
        line = f"{state} {chain.producer}: {chain.events} events, seq 0-{chain.last_seq}"
        print(line + (f"; first broken link {chain.broken}" if chain.broken else "")
              + (f"; {chain.duplicates} written twice" if chain.duplicates else ""))
    for problem in result.unreadable:
        print(f"BROKEN {problem}")
    broken = sum(c.broken is not None for c in result.chains) + len(result.unreadable)
    print(f"{len(records)} records, {len(result.chains)} chains on {name}: "
          + ("every chain is whole" if result.ok else f"{broken} broken"))
    if not result.ok:
        raise SystemExit(1)


# Message content keys (issue 15, part "crypto"; content_crypto.py).

@app.command(faust.cli.argument("action", type=click.Choice(["rotate", "retire", "reencrypt"])),
             faust.cli.argument("key_id", required=False))
async def keys(self: faust.cli.AppCommand, action: str, key_id: str | None) -> None:
    """Manage the message content keys of GOCHAT_CONTENT_KEYS_FILE.

    rotate: add a new key, which encrypts from the next start of each gateway; every key
    listed decrypts. reencrypt: seal all stored history under the newest key. retire KEY_ID:
    remove an old key from the file, once `reencrypt` has left nothing under it. Each is
    an event of the audit log.
    """
    operator, source = cli_identity()
    async with audit_session(settings, "cli") as audit_log:
        def record(what: str, target: str, outcome: str = "success", **details: object) -> None:
            audit_log.record(operator, what, target, outcome, source, **details)

        await _manage_content_keys(action, key_id, record)


async def _manage_content_keys(action: str, key_id: str | None, record: Callable[..., None]) -> None:
    from .content_crypto import ContentKeysMissing, content_keyring, new_key, read_key_file, reencrypt, write_key_file
    from .history import RecentMessages
    from .store import open_store

    if action == "reencrypt":
        try:
            ring = content_keyring(settings)
        except ContentKeysMissing as exc:
            raise click.ClickException(f"not reencrypted: {exc}") from None
        if ring is None:
            raise click.ClickException("not reencrypted: content encryption is turned off")
        store = await open_store(settings.message_store_url)
        redis = Redis.from_url(settings.redis_url)
        try:
            done = await reencrypt(store, ring)
            # The cached lists hold the old envelopes: dropped, read again from the store.
            recent = RecentMessages(redis, store, namespace=settings.namespace, size=settings.history_max_limit,
                                    ttl_s=settings.history_cache_ttl_s)
            await recent.invalidate(sorted(done.conversations))
        finally:
            await redis.aclose()
            await store.close()
        record("content_keys.reencrypt", ring.current, "success" if not done.undecryptable else "partial",
               rewritten=done.rewritten, already=done.current, undecryptable=len(done.undecryptable))
        print(f"{done.rewritten} messages sealed again under {ring.current}; {done.current} were already")
        if done.undecryptable:
            raise click.ClickException(
                f"{len(done.undecryptable)} stored messages did not open and were left as they are; retire no key "
                f"they need: {', '.join(done.undecryptable[:20])}")
        return
    path = settings.content_keys_file
    if path is None:
        raise click.ClickException(f"{action} edits the key file: set GOCHAT_CONTENT_KEYS_FILE")
    encoded, current = read_key_file(path) if path.exists() or action == "retire" else ({}, None)
    if action == "rotate":
        # Named by when it was made: an id is never used again for another key.
        new_id = time.strftime("k%Y%m%d%H%M%S", time.gmtime())
        if new_id in encoded:
            raise click.ClickException(f"key {new_id} exists: rotate again in a second")
        write_key_file(path, {**encoded, new_id: new_key()}, new_id)
        record("content_keys.rotate", new_id, file=str(path), previous=current)
        print(f"{new_id} added to {path}: restart the gateways (and a webhook task service) to encrypt with it; "
              "with several hosts, give every process the new file with GOCHAT_CONTENT_KEY_ID set to the old key "
              "first, then unset it")
        return
    if key_id is None or key_id not in encoded:
        raise click.UsageError(f"retire which key? one of {sorted(encoded)}")
    if key_id in (current, settings.content_key_id):
        raise click.ClickException(f"{key_id} encrypts: rotate first, reencrypt, then retire it")
    write_key_file(path, {k: v for k, v in encoded.items() if k != key_id}, str(current))
    record("content_keys.retire", key_id, file=str(path))
    print(f"{key_id} removed from {path}: messages still sealed under it no longer open")
