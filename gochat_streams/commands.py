"""Commands added to the Faust CLI: ``python -m gochat_streams <command>``."""

from __future__ import annotations

import faust
from faust.cli import option

from . import topics
from .app import app, settings
from .gateway.tokens import issue_token


@app.command(option("--ttl", type=int, default=None, help="Seconds until the token expires."),
             faust.cli.argument("user_id"))
async def token(self: faust.cli.AppCommand, user_id: str, ttl: int | None) -> None:
    """Print a signed gateway token for USER_ID (development use)."""
    print(issue_token(user_id, settings.auth_secret.get_secret_value(), ttl or settings.token_ttl_s))


@app.command()
async def create_topics(self: faust.cli.AppCommand) -> None:
    """Create the upstream, user and task topics with the spec's settings."""
    await topics.ensure_topics(settings, topics.core(settings))


@app.command()
async def gateway(self: faust.cli.AppCommand) -> None:
    """Run the WebSocket gateway (GOCHAT_GATEWAY_ID, GOCHAT_GATEWAY_PORT)."""
    from .gateway.server import run

    await run(settings)
