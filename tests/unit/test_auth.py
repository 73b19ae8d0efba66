"""Where a token may travel, and that an access-log line never keeps one (gateway/auth.py)."""

from __future__ import annotations

import logging

from gochat_streams.gateway.auth import RedactTokens


def _line(message: str, *args: object) -> str:
    record = logging.LogRecord("aiohttp.access", logging.INFO, __file__, 1, message, args, None)
    assert RedactTokens().filter(record)
    return record.getMessage()


def test_a_token_in_a_url_is_blanked_in_the_access_log() -> None:
    line = _line('%s "%s" %s "%s"', "127.0.0.1", "GET /ws?a=1&token=default.YWxpY2U.9.c2ln HTTP/1.1", 401,
                 "http://gw/?token=default.Ym9i.9.c2ln")
    assert line == '127.0.0.1 "GET /ws?a=1&token=[redacted] HTTP/1.1" 401 "http://gw/?token=[redacted]"'


def test_a_line_without_a_token_is_left_as_it_is() -> None:
    assert _line('"%s" %d%%', "GET /history?conversation_id=g1 HTTP/1.1", 100) == \
        '"GET /history?conversation_id=g1 HTTP/1.1" 100%'
