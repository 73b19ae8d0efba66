"""The sealed envelope (content_crypto.py): what opens, what does not, and the keyring's sources."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from gochat_streams.codecs import DecodeError, decode_upstream
from gochat_streams.content_crypto import (
    ContentKeyring,
    ContentKeysMissing,
    UnopenedContent,
    content_keyring,
    max_sealed_chars,
    new_key,
    open_message,
    read_key_file,
    seal,
    sealed_length,
    write_key_file,
)
from gochat_streams.devstack import DEV_ENV
from gochat_streams.gateway.keys import CONTENT_KEYS
from gochat_streams.gateway.server import create_app
from gochat_streams.models import CLIENT_FRAME_ADAPTER, UpstreamMessage
from gochat_streams.settings import DEV_CONTENT_KEY, Settings

K1, K2 = bytes(range(32)), bytes(range(1, 33))
RING = ContentKeyring({"k1": K1}, "k1")


def _message(**changes: object) -> UpstreamMessage:
    fields: dict[str, object] = dict(
        message_id="m1", from_user_id="alice", to_user_id="bob", conversation_id="alice:bob", timestamp=1,
        gateway_id="gw", message_type="file", content="https://example.com/secret.pdf",
        metadata={"filename": "salaries.pdf", "size": 10, "url": "https://example.com/x"})
    fields.update(changes)
    return UpstreamMessage.model_validate(fields)


def test_a_user_message_is_sealed_whole_and_opens_as_it_was() -> None:
    message = _message()
    sealed = seal(RING, message)
    assert sealed.content.startswith("gcm1.k1.") and sealed.metadata == {}
    assert "salaries" not in sealed.model_dump_json() and "secret" not in sealed.model_dump_json()
    # What travels validates as it is, though a file's metadata is inside the content.
    assert UpstreamMessage.model_validate_json(sealed.model_dump_json()) == sealed
    assert open_message(RING, sealed) == message
    # A fresh nonce every time: the same message seals differently.
    assert seal(RING, message).content != sealed.content


def test_a_location_is_sealed_with_its_coordinates() -> None:
    message = _message(message_type="location", content="北京市朝阳区",
                       metadata={"latitude": 39.9042, "longitude": 116.4074, "accuracy": 10})
    sealed = seal(RING, message)
    assert "39.9042" not in sealed.model_dump_json() and sealed.metadata == {}
    assert open_message(RING, sealed) == message


def test_system_messages_and_clear_content_are_left_as_they_are() -> None:
    system = _message(message_type="system_group", to_user_id=None, conversation_id="g1", content="x",
                      metadata={"action": "create", "group_id": "g1"})
    assert seal(RING, system) == system and open_message(RING, system) == system
    clear = _message()
    assert open_message(RING, clear) == clear
    assert seal(None, clear) == clear


def test_an_altered_ciphertext_does_not_open() -> None:
    sealed = seal(RING, _message())
    version, kid, nonce, body = sealed.content.split(".")
    raw = bytearray(base64.b64decode(body))
    raw[3] ^= 1
    tampered = sealed.model_copy(update={"content": ".".join((version, kid, nonce, base64.b64encode(raw).decode()))})
    with pytest.raises(UnopenedContent) as caught:
        open_message(RING, tampered)
    assert caught.value.reason == "tampered"


@pytest.mark.parametrize("moved", [{"message_id": "m2"}, {"from_user_id": "mallory"},
                                   {"conversation_id": "bob:mallory"}, {"message_type": "text"}])
def test_a_ciphertext_moved_to_another_message_does_not_open(moved: dict[str, str]) -> None:
    sealed = seal(RING, _message())
    with pytest.raises(UnopenedContent) as caught:
        open_message(RING, sealed.model_copy(update=moved))
    assert caught.value.reason == "tampered"


def test_an_unknown_key_or_a_broken_envelope_is_a_clear_error() -> None:
    sealed = seal(ContentKeyring({"k0": K2}, "k0"), _message())
    with pytest.raises(UnopenedContent, match="content key 'k0', which is not in this keyring") as caught:
        open_message(RING, sealed)
    assert caught.value.reason == "unknown_key"
    with pytest.raises(UnopenedContent) as caught:
        open_message(RING, sealed.model_copy(update={"content": "gcm1.k1.!!.x"}))
    assert caught.value.reason == "malformed"
    with pytest.raises(UnopenedContent) as caught:
        open_message(None, sealed)
    assert caught.value.reason == "unknown_key"


def test_after_a_rotation_the_new_key_seals_and_both_open() -> None:
    old = seal(RING, _message())
    rotated = ContentKeyring({"k1": K1, "k2": K2}, "k2")
    new = seal(rotated, _message(message_id="m2"))
    assert new.content.startswith("gcm1.k2.")
    assert open_message(rotated, old) == _message() and open_message(rotated, new) == _message(message_id="m2")
    assert "K1" not in repr(rotated) and base64.b64encode(K1).decode() not in repr(rotated)


def test_a_client_cannot_pass_off_content_as_sealed_to_skip_the_metadata_check() -> None:
    frame = {"type": "send", "message": {"message_id": "m1", "to_user_id": "bob", "message_type": "file",
                                         "content": "gcm1.k1.AAAA.AAAA", "metadata": {}}}
    with pytest.raises(ValidationError):
        CLIENT_FRAME_ADAPTER.validate_python(frame)


def test_the_longest_envelope_bounds_every_envelope() -> None:
    body = "é" * 2000
    sealed = seal(RING, _message(message_type="text", content=body, metadata={}))
    plain = json.dumps({"content": body, "metadata": {}}, ensure_ascii=False, separators=(",", ":"))
    assert len(sealed.content) <= sealed_length(len(plain.encode()))


def test_the_keyring_comes_from_settings_or_a_key_file(tmp_path: Path) -> None:
    with pytest.raises(ContentKeysMissing, match="GOCHAT_CONTENT_ENCRYPTION_DISABLED"):
        content_keyring(Settings())
    assert content_keyring(Settings(content_encryption_disabled=True)) is None
    k1, k2 = new_key(), new_key()
    ring = content_keyring(Settings(content_keys={"k1": k1}))
    assert ring is not None and ring.current == "k1" and ring.keys["k1"] == base64.b64decode(k1)
    with pytest.raises(ContentKeysMissing, match="GOCHAT_CONTENT_KEY_ID"):
        content_keyring(Settings(content_keys={"k1": k1, "k2": k2}))
    assert content_keyring(Settings(content_keys={"k1": k1, "k2": k2}, content_key_id="k2")).current == "k2"
    with pytest.raises(ContentKeysMissing, match="5 bytes, not 32"):
        content_keyring(Settings(content_keys={"k1": base64.b64encode(b"short").decode()}))
    path = tmp_path / "content-keys.json"
    write_key_file(path, {"k1": k1, "k2": k2}, "k2")
    assert path.stat().st_mode & 0o077 == 0
    assert read_key_file(path) == ({"k1": k1, "k2": k2}, "k2")
    assert content_keyring(Settings(content_keys_file=path)).current == "k2"
    # Pinned to the old key while every process is given the new one.
    assert content_keyring(Settings(content_keys_file=path, content_key_id="k1")).current == "k1"
    with pytest.raises(ContentKeysMissing, match="not both"):
        content_keyring(Settings(content_keys_file=path, content_keys={"k1": k1}))


def test_the_development_key_is_refused_outside_dev_mode() -> None:
    with pytest.raises(ContentKeysMissing, match="built-in development key"):
        content_keyring(Settings(content_keys={"dev": DEV_CONTENT_KEY}))
    assert content_keyring(Settings(content_keys={"dev": DEV_CONTENT_KEY}, dev_mode=True)).current == "dev"


def test_a_gateway_does_not_start_without_content_keys_unless_encryption_is_turned_off() -> None:
    secret = "x" * 32
    with pytest.raises(ContentKeysMissing, match="GOCHAT_CONTENT_ENCRYPTION_DISABLED=1"):
        create_app(Settings(auth_secret=secret))
    assert create_app(Settings(auth_secret=secret, content_encryption_disabled=True))[CONTENT_KEYS] is None
    assert create_app(Settings(auth_secret=secret, content_keys={"k1": new_key()}))[CONTENT_KEYS].current == "k1"


def test_the_logic_service_bounds_sealed_content_by_the_frame_not_the_character_limit() -> None:
    settings = Settings(max_content_chars=100, max_frame_bytes=4096)
    sealed = seal(RING, _message(message_type="text", content="x" * 100, metadata={"format": "plain"}))
    assert len(sealed.content) > 100
    raw = sealed.model_dump_json().encode()
    assert decode_upstream(raw, max_content_chars=100, max_sealed_chars=max_sealed_chars(settings)) == sealed
    too_long = sealed.model_copy(update={"content": sealed.content + "A" * max_sealed_chars(settings)})
    with pytest.raises(DecodeError) as caught:
        decode_upstream(too_long.model_dump_json().encode(), max_content_chars=100,
                        max_sealed_chars=max_sealed_chars(settings))
    assert caught.value.reason == "oversize"


def test_the_dev_stack_builds_its_settings_from_dev_env() -> None:
    env = {k[len("GOCHAT_"):].lower(): v for k, v in DEV_ENV.items()}
    ring = content_keyring(Settings(**env))
    assert ring is not None and ring.current == "dev"
