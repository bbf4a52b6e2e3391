"""Storage URLs in logs and errors never show a password."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_monitor.cli._storage import redact

_WORDS = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=12)


# No deadline: a pure function, whose timing says only how loaded the machine is.
@settings(deadline=None)
@given(user=_WORDS, password=_WORDS, host=_WORDS, db=_WORDS)
def test_the_password_is_replaced(user: str, password: str, host: str, db: str) -> None:
    url = f"postgresql://{quote(user)}:{quote(password)}@{host}:5432/{db}"
    shown = redact(url)
    assert shown == f"postgresql://{quote(user)}:***@{host}:5432/{db}"


@settings(deadline=None)
@given(st.text(st.characters(exclude_characters="@"), max_size=40))
def test_a_url_without_credentials_is_unchanged(text: str) -> None:
    assert redact(text) == text
    assert redact(f"sqlite:///{text}") == f"sqlite:///{text}"
