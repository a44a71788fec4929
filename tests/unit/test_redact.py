"""URLs lose their password and secret query values wherever they are printed."""

from __future__ import annotations

from pytest_vpstest.redact import redact_text, redact_url


def test_password_and_secret_query_values_are_masked() -> None:
    url = "https://bob:hunter2@hooks.example.com/x?token=abc&room=5&api_key=zz&Signature=q"
    assert redact_url(url) == "https://bob:***@hooks.example.com/x?token=***&room=5&api_key=***&Signature=***"
    assert redact_url("https://tok123@h/x") == "https://***@h/x"
    assert redact_url("http://127.0.0.1:8080/events") == "http://127.0.0.1:8080/events"


def test_urls_inside_a_message_are_masked_and_the_rest_kept() -> None:
    text = "channel failed (http://u:pw9@h:9/a?sig=1): ConnectionError"
    assert redact_text(text) == "channel failed (http://u:***@h:9/a?sig=***): ConnectionError"
