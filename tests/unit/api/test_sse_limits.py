"""The live-event stream's limits, without a server: entry ids and open streams per token."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from api.problems import Problem
from api.rest.events import Streams, entry_id
from factory.errors import InputError
from factory.tokens import ApiToken, Scope


def token(name: str) -> ApiToken:
    return ApiToken(f"tok_{name:0>12}", name, Scope.VIEWER, None, datetime.now(UTC), None, None)


@pytest.mark.parametrize("good", ["0", "1733480000000-0", "1733480000000", f"{2**64 - 1}-{2**64 - 1}"])
def test_entry_ids_redis_takes_are_taken(good: str) -> None:
    assert entry_id(good) == good


@pytest.mark.parametrize("bad", ["", "x", "1-", "-1", "1-2-3", f"{2**64}-0", "1 -0", "１-0"])
def test_anything_else_is_refused_before_redis_sees_it(bad: str) -> None:
    with pytest.raises(InputError, match="not an event id"):
        entry_id(bad)


def test_streams_are_limited_per_token_and_in_all() -> None:
    streams, ana, bo, cy = Streams(per_token=2, total=3), token("ana"), token("bo"), token("cy")
    with streams.opened(ana), streams.opened(ana):
        with pytest.raises(Problem) as per_token:
            streams.check(ana)
        assert per_token.value.status == 429 and "2 live event streams" in per_token.value.detail
        streams.check(bo)
        with streams.opened(bo):
            with pytest.raises(Problem) as total:
                streams.check(cy)
            assert total.value.status == 503
    streams.check(ana)  # closed streams are counted out again
    streams.check(cy)
