import time

import pytest

from gochat_streams.gateway.server import create_app
from gochat_streams.gateway.tokens import (
    Claims, InsecureKeyring, InvalidToken, Keyring, _b64, _signature, claimed_user_id, issue_token, keyring,
    verify_token,
)
from gochat_streams.settings import DEV_AUTH_SECRET, Settings

KEYS = Keyring.single("s3cret")
LONG = "x" * 32


def test_token_round_trips_the_user_id_and_expiry() -> None:
    token = issue_token("user_123", KEYS, 60, now=1000.0)
    assert token.startswith("default.")
    assert verify_token(token, KEYS, now=1000.0) == Claims("user_123", 1060)


def test_token_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(issue_token("user_123", Keyring.single("other"), 60), KEYS)


def test_token_for_another_user_with_a_copied_signature_is_refused() -> None:
    good = issue_token("alice", KEYS, 60).split(".")
    mallory = issue_token("mallory", KEYS, 60).split(".")
    with pytest.raises(InvalidToken):
        verify_token(".".join([good[0], mallory[1], *good[2:]]), KEYS)


def test_expired_token_is_refused() -> None:
    token = issue_token("alice", KEYS, 60, now=1000.0)
    assert verify_token(token, KEYS, now=1059.0).user_id == "alice"
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(token, KEYS, now=1061.0)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "default.YWxpY2U.notanumber.sig", "a.b.c.d.e",
                                   "default.YWxpY2U.99999999999.sïg"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        verify_token(token, KEYS)


def test_a_rotated_keyring_signs_with_the_new_key_and_accepts_the_old_ones() -> None:
    old = Keyring({"k1": b"old secret"}, "k1")
    rotated = Keyring({"k1": b"old secret", "k2": b"new secret"}, "k2")
    before = issue_token("alice", old, 60)
    after = issue_token("alice", rotated, 60)
    assert after.startswith("k2.")
    assert verify_token(before, rotated).user_id == "alice"
    assert verify_token(after, rotated).user_id == "alice"
    # Once the old key is removed, its tokens are refused.
    with pytest.raises(InvalidToken, match="unknown key"):
        verify_token(before, Keyring({"k2": b"new secret"}, "k2"))
    # A token cannot name another listed key than the one that signed it.
    with pytest.raises(InvalidToken, match="signature"):
        verify_token("k1." + after.split(".", 1)[1], rotated)


def test_outside_dev_mode_the_default_or_a_short_secret_is_refused_with_what_to_set() -> None:
    with pytest.raises(InsecureKeyring, match="built-in development secret.*GOCHAT_AUTH_SECRET"):
        keyring(Settings(dev_mode=False))
    with pytest.raises(InsecureKeyring, match="31 bytes.*32"):
        keyring(Settings(dev_mode=False, auth_secret="y" * 31))
    with pytest.raises(InsecureKeyring, match="'old' is 5 bytes"):
        keyring(Settings(dev_mode=False, auth_keys={"new": LONG, "old": "short"}, auth_signing_key="new"))
    assert keyring(Settings(dev_mode=False, auth_secret=LONG)) == Keyring({"default": LONG.encode()}, "default")
    assert keyring(Settings(dev_mode=True)) == Keyring({"default": DEV_AUTH_SECRET.encode()}, "default")


def test_the_gateway_refuses_to_start_with_the_default_secret_outside_dev_mode() -> None:
    with pytest.raises(InsecureKeyring, match="development secret"):
        create_app(Settings(dev_mode=False))
    create_app(Settings(dev_mode=False, auth_secret=LONG, content_encryption_disabled=True))


def test_a_keyring_of_several_keys_names_its_signing_key() -> None:
    keys = {"k1": LONG, "k2": LONG + "2"}
    assert keyring(Settings(auth_keys=keys, auth_signing_key="k2")).signing_key_id == "k2"
    assert keyring(Settings(auth_keys={"k1": LONG})).signing_key_id == "k1"
    with pytest.raises(InsecureKeyring, match="GOCHAT_AUTH_SIGNING_KEY"):
        keyring(Settings(auth_keys=keys))
    with pytest.raises(InsecureKeyring, match="GOCHAT_AUTH_SIGNING_KEY"):
        keyring(Settings(auth_keys=keys, auth_signing_key="k3"))
    with pytest.raises(InsecureKeyring, match="not both"):
        keyring(Settings(auth_keys=keys, auth_signing_key="k1", auth_secret=LONG))


def test_keys_are_read_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOCHAT_AUTH_KEYS", f'{{"2026-12": "{LONG}", "2026-06": "{LONG}-old"}}')
    monkeypatch.setenv("GOCHAT_AUTH_SIGNING_KEY", "2026-12")
    monkeypatch.delenv("GOCHAT_AUTH_SECRET", raising=False)
    keys = keyring(Settings(dev_mode=False))
    assert keys.signing_key_id == "2026-12" and set(keys.keys) == {"2026-12", "2026-06"}
    assert "old" not in repr(Settings().auth_keys)  # SecretStr: never printed


@pytest.mark.parametrize("user_id", ["alice:bob", "", "a b", "x" * 129])
def test_a_token_names_a_user_id_or_is_neither_issued_nor_accepted(user_id: str) -> None:
    # "alice:bob" is a single chat's id: a user of that name would be ambiguous in it.
    with pytest.raises(ValueError):
        issue_token(user_id, KEYS, 60)
    signed = f"{KEYS.signing_key_id}.{_b64(user_id.encode())}.{int(time.time()) + 60}"
    forged_by_a_key_holder = f"{signed}.{_signature(KEYS.keys[KEYS.signing_key_id], signed)}"
    with pytest.raises(InvalidToken, match="not a user id"):
        verify_token(forged_by_a_key_holder, KEYS)


def test_the_user_a_token_claims_is_read_without_verifying_for_the_audit_log() -> None:
    forged = issue_token("alice", Keyring.single("some other secret"), 60)
    assert claimed_user_id(forged) == "alice"
    for garbage in ("", "x", "a.!!!.1.s", f"a.{_b64(b'not a user:')}.1.s"):
        assert claimed_user_id(garbage) is None
