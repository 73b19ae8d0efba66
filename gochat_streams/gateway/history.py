"""``GET /history``: a conversation's recent messages, for its readers; the store and cache it reads.

A single chat is read by its two users; a group or conversation by its current members,
from the message that made them members on (store/base.py: ``reader_since``). Every read
is audited: here when served, by auth.audit_refusals when refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis

from ..content_crypto import UnopenedContent, open_message
from ..history import RecentMessages
from ..metrics import content_undecryptable
from ..models.common import Id
from ..store import open_store
from .auth import authenticate
from .keys import AUDIT, CONTENT_KEYS, RECENT, SETTINGS, STORE

log = logging.getLogger(__name__)

_ID_ADAPTER: TypeAdapter[str] = TypeAdapter(Id)


async def history_clients(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    store = await open_store(s.message_store_url)
    redis = Redis.from_url(s.redis_url, socket_connect_timeout=s.history_cache_timeout_s,
                           socket_timeout=s.history_cache_timeout_s)
    app[STORE] = store
    app[RECENT] = RecentMessages(redis, store, namespace=s.namespace, size=s.history_max_limit,
                                 ttl_s=s.history_cache_ttl_s)
    yield
    await redis.aclose()
    await store.close()


async def history(request: web.Request) -> web.Response:
    """``GET /history?conversation_id=...&limit=N``: the newest messages, oldest first, for members."""
    user_id = authenticate(request)
    s = request.app[SETTINGS]
    try:
        conversation_id = _ID_ADAPTER.validate_python(request.query.get("conversation_id"))
        limit = int(request.query.get("limit", s.history_default_limit))
    except (ValidationError, ValueError):
        raise web.HTTPBadRequest(text="conversation_id (an id) and an integer limit are expected") from None
    if not 1 <= limit <= s.history_max_limit:
        raise web.HTTPBadRequest(text=f"limit must be between 1 and {s.history_max_limit}")
    since_seq = await request.app[STORE].reader_since(conversation_id, user_id)
    if since_seq is None:
        raise web.HTTPForbidden(text=f"{user_id} may not read {conversation_id}")
    # The store and the cache hold sealed content: opened here, for this reader only.
    keys, opened, undecryptable = request.app[CONTENT_KEYS], [], []
    for m in await request.app[RECENT].get(conversation_id, limit, since_seq):
        try:
            opened.append(open_message(keys, m.to_downstream()).model_dump(mode="json"))
        except UnopenedContent as exc:
            content_undecryptable.labels("gateway", exc.reason).inc()
            log.error("history of %s: %s", conversation_id, exc.detail)
            undecryptable.append(m.message_id)
    request.app[AUDIT].record(user_id, "history.read", conversation_id, "success", request.remote, limit=limit,
                              messages=len(opened) + len(undecryptable))
    body: dict[str, object] = {"conversation_id": conversation_id, "messages": opened}
    if undecryptable:
        #: Messages left out: their content did not open (e.g. under a retired key).
        body["undecryptable"] = undecryptable
    return web.json_response(body, dumps=lambda obj: json.dumps(obj, ensure_ascii=False))
