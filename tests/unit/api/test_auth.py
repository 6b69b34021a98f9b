"""The API's guard on the in-memory token store: scopes, the per-token rate, refused guesses, the cache."""

from __future__ import annotations

import pytest

from api.auth import Guard
from api.problems import Problem
from factory.tokens import InMemoryTokenStore, Scope


async def test_scopes_are_ordered_and_a_narrow_one_is_told_what_it_needs() -> None:
    store = InMemoryTokenStore()
    _, raw = await store.create("dash", "viewer")
    guard = Guard(store)
    token = await guard.authenticate(f"Bearer {raw}")
    guard.require(token, Scope.VIEWER)
    with pytest.raises(Problem) as refused:
        guard.require(token, Scope.OPERATOR)
    assert refused.value.status == 403 and "--scope operator" in refused.value.detail


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic YTpi", "Bearer fct_nope", "bearer  "])
async def test_no_or_a_bad_token_is_401_with_the_way_to_get_one(header: str | None) -> None:
    with pytest.raises(Problem) as refused:
        await Guard(InMemoryTokenStore()).authenticate(header)
    assert refused.value.status == 401 and refused.value.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_token_over_its_rate_waits_and_others_do_not() -> None:
    store = InMemoryTokenStore()
    (first, _), (second, _) = await store.create("a", "viewer"), await store.create("b", "viewer")
    guard = Guard(store, rate_per_s=0.5, burst=3)
    for _ in range(3):
        guard.admit(first)
    with pytest.raises(Problem) as limited:
        guard.admit(first)
    assert limited.value.status == 429 and limited.value.headers["Retry-After"] == "2"
    guard.admit(second)


async def test_a_client_that_keeps_guessing_is_slowed_down_without_a_lookup() -> None:
    store = InMemoryTokenStore()
    _, raw = await store.create("ok", "viewer")
    guard = Guard(store, failures_per_s=0.1, failures_burst=5)
    for _ in range(5):
        with pytest.raises(Problem) as wrong:
            await guard.authenticate("Bearer fct_" + "x" * 43, client="10.0.0.9")
        assert wrong.value.status == 401
    with pytest.raises(Problem) as slowed:
        await guard.authenticate(f"Bearer {raw}", client="10.0.0.9")  # even a right one, until it waited
    assert slowed.value.status == 429 and "10.0.0.9" in slowed.value.detail
    assert (await guard.authenticate(f"Bearer {raw}", client="10.0.0.7")).name == "ok"  # others are not


async def test_a_revoked_token_stops_working_once_its_verification_is_stale() -> None:
    store = InMemoryTokenStore()
    _, raw = await store.create("gone", "operator")
    guard = Guard(store, cache_s=0.0)
    await guard.authenticate(f"Bearer {raw}")
    await store.revoke("gone")
    with pytest.raises(Problem) as refused:
        await guard.authenticate(f"Bearer {raw}")
    assert refused.value.status == 401
