"""The audit's canonical text is always storable, and decodes to the payload it was made from."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from memory.chain import canonical
from observability.text import unstorable

# Any code point, lone surrogates and NUL included (hypothesis leaves surrogates out by default).
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()) | st.sampled_from("\x00\ud800\udfff"))


@given(st.dictionaries(ANY_TEXT, ANY_TEXT | st.lists(ANY_TEXT, max_size=3), max_size=4))
def test_canonical_text_is_storable_and_lossless(payload: dict[str, object]) -> None:
    text = canonical(payload)
    assert unstorable(text) is None  # no NUL, no lone surrogate: PostgreSQL takes it as it is
    text.encode("utf-8")
    assert json.loads(text) == payload


def test_a_lone_surrogate_is_kept_as_its_escape() -> None:
    assert canonical({"q": "a\ud800b"}) == '{"q":"a\\ud800b"}'
    assert canonical({"q": "ü"}) == '{"q":"ü"}'  # other text is written as itself, as before
