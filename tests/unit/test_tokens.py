import pytest

from gochat_streams.gateway.tokens import InvalidToken, issue_token, verify_token

SECRET = "s3cret"


def test_token_round_trips_the_user_id() -> None:
    assert verify_token(issue_token("user_123", SECRET, 60), SECRET) == "user_123"


def test_token_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(issue_token("user_123", "other", 60), SECRET)


def test_token_for_another_user_with_a_copied_signature_is_refused() -> None:
    good = issue_token("alice", SECRET, 60)
    forged = issue_token("mallory", SECRET, 60).split(".")[0] + "." + ".".join(good.split(".")[1:])
    with pytest.raises(InvalidToken):
        verify_token(forged, SECRET)


def test_expired_token_is_refused() -> None:
    token = issue_token("alice", SECRET, 60, now=1000.0)
    assert verify_token(token, SECRET, now=1059.0) == "alice"
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(token, SECRET, now=1061.0)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "YWxpY2U.notanumber.sig", "a.b.c.d"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        verify_token(token, SECRET)
