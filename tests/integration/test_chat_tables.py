"""Chainlit's ``SQLAlchemyDataLayer`` on the factory's own PostgreSQL (the embedded server, reached over
its Unix socket): what the chat writes comes back, and a deleted thread takes its steps, elements and
feedbacks along. The data layer logs and swallows SQL errors, so every test also reads the rows back
and checks that nothing was logged as failed."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
import typing
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from psycopg.rows import dict_row

from chat.data_layer import data_layer
from chat.tables import DDL
from factory.migrations import migrate
from tests.unit.chat.test_chat_tables import chainlit  # noqa: F401  (fixture: Chainlit imported off the repository)

if TYPE_CHECKING:
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
    from chainlit.data.storage_clients.base import BaseStorageClient

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("chainlit")]


def at(second: int) -> str:
    """Chainlit's timestamps are ISO text; steps come back ordered by it."""
    return f"2026-12-01T09:00:{second:02d}.000000Z"


async def rows(url: str, sql: str, *params: object) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(url, row_factory=dict_row) as conn:
        cur = await conn.execute(sql.encode(), params)
        return await cur.fetchall()


async def other_backends(url: str, timeout_s: float = 5.0) -> int:
    """Connections to this test's database besides the one asking, once they have had time to go."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await rows(url, "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()")
        left = int(found[0]["n"]) - 1
        if left == 0 or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.1)


@contextlib.contextmanager
def chainlit_context(thread_id: str) -> Iterator[None]:
    """The Chainlit context a request of the chat runs in. Only the step and element writes read it
    (``queue_until_user_message``); an HTTP session writes at once, as a websocket session does after
    the user's first message (before it, Chainlit queues the writes in the session)."""
    context = importlib.import_module("chainlit.context")
    session = importlib.import_module("chainlit.session")
    http = session.HTTPSession(id=str(uuid.uuid4()), client_type="webapp", thread_id=thread_id)
    token = context.context_var.set(context.ChainlitContext(http))
    try:
        yield
    finally:
        context.context_var.reset(token)


@pytest.fixture
async def history(pg_url: str, caplog: pytest.LogCaptureFixture) -> AsyncIterator[SQLAlchemyDataLayer]:
    """The data layer on a migrated database; afterwards: no SQL error was swallowed, no connection is left."""
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        await migrate(conn)
    caplog.set_level(logging.WARNING, logger="chainlit")
    layer = data_layer(pg_url)
    try:
        yield layer
    finally:
        await layer.close()
    logged = [r.getMessage() for r in caplog.get_records("call") if r.name == "chainlit"]
    failed = [m.splitlines()[0] for m in logged if "error occurred" in m]
    assert not failed, f"the data layer swallowed SQL errors: {failed}"
    assert await other_backends(pg_url) == 0, "the data layer left connections open after close()"


def full_step(thread_id: str, second: int, **fields: Any) -> dict[str, Any]:
    """A step with every key Chainlit's StepDict has, none empty (create_step writes every non-empty key)."""
    step_id = fields.pop("id", str(uuid.uuid4()))
    step: dict[str, Any] = {
        "id": step_id, "threadId": thread_id, "parentId": None, "name": "planner", "type": "run",
        "command": "plan", "modes": {"model": "fast", "effort": "low"}, "streaming": False,
        "waitForAnswer": False, "isError": False, "metadata": {"stage": "plan"}, "tags": ["stage", "plan"],
        "input": "the task", "output": "the plan", "createdAt": at(second), "start": at(second),
        "end": at(second + 1), "generation": {"model": "local", "tokens": 3}, "showInput": True,
        "defaultOpen": True, "autoCollapse": False, "language": "markdown", "icon": "list-checks",
        # Only a step read back (get_step / get_thread) and saved again carries its feedback.
        "feedback": {"forId": step_id, "id": None, "value": 1, "comment": "kept"},
    }  # fmt: skip
    return {**step, **fields}


async def stored_step(url: str, step_id: str) -> dict[str, Any]:
    found = await rows(url, "SELECT to_jsonb(s) AS row FROM steps s WHERE id = %s", step_id)
    assert found, f"step {step_id} was not stored"
    return dict(found[0]["row"])


async def test_the_migration_runs_twice_and_its_ddl_again(pg_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        assert "0501_chat_tables" in await migrate(conn)
        assert await migrate(conn) == []
        await conn.execute(DDL.encode())  # the DDL itself is rerunnable (IF NOT EXISTS throughout)
        await conn.commit()
    tables = await rows(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert {"users", "threads", "steps", "elements", "feedbacks"} <= {t["tablename"] for t in tables}


async def test_the_embedded_servers_socket_url_is_what_the_data_layer_connects_through(
    pg_url: str, history: SQLAlchemyDataLayer
) -> None:
    parts = urlsplit(pg_url)
    assert parts.hostname is None and parse_qs(parts.query)["host"][0].startswith("/"), "the fixture is no socket URL"
    assert history.engine.url.query["host"] == parse_qs(parts.query)["host"][0]
    assert await history.get_user("nobody") is None  # a round trip over the socket


async def test_step_writes_need_a_chainlit_context(history: SQLAlchemyDataLayer) -> None:
    context = importlib.import_module("chainlit.context")
    with pytest.raises(context.ChainlitContextException):
        await history.create_step(full_step(str(uuid.uuid4()), 0))


async def test_users_threads_steps_and_feedback_come_back(pg_url: str, history: SQLAlchemyDataLayer) -> None:
    cl_types = importlib.import_module("chainlit.types")
    user = importlib.import_module("chainlit.user")
    alice = await history.create_user(
        user.User(identifier="alice", display_name="Alice", metadata={"role": "operator"})
    )
    assert alice is not None and alice.identifier == "alice" and alice.metadata == {"role": "operator"}
    again = await history.create_user(user.User(identifier="alice", metadata={"role": "viewer"}))
    assert again is not None and again.id == alice.id and again.metadata == {"role": "viewer"}
    assert await history.get_user("alice") == again

    thread_id = str(uuid.uuid4())
    await history.update_thread(thread_id, name="Build a CLI", user_id=alice.id, metadata={"run_id": "r1"}, tags=["f"])
    assert await history.get_thread_author(thread_id) == "alice"

    parent = full_step(thread_id, 1)
    step_dict = importlib.import_module("chainlit.step").StepDict
    assert set(parent) == set(typing.get_type_hints(step_dict)), "fill every StepDict key in full_step"
    child = full_step(thread_id, 3, parentId=parent["id"], name="search", type="tool", modes={"k": "v"})
    message = full_step(thread_id, 5, name="Factory", type="assistant_message", showInput=False, output="done")
    with chainlit_context(thread_id):
        for step in (message, child, parent):  # written out of order, as concurrent tasks may
            await history.create_step(dict(step))
        await history.update_step({**child, "output": "found 3 files", "isError": True, "end": at(4)})

    assert await stored_step(pg_url, parent["id"]) == {**parent, "showInput": "true"}
    assert await stored_step(pg_url, child["id"]) == {
        **child,
        "output": "found 3 files",
        "isError": True,
        "end": at(4),
        "showInput": "true",
    }

    feedback_id = await history.upsert_feedback(cl_types.Feedback(forId=message["id"], threadId=thread_id, value=1))
    await history.upsert_feedback(cl_types.Feedback(id=feedback_id, forId=message["id"], value=0, comment="too terse"))

    thread = await history.get_thread(thread_id)
    assert thread is not None
    assert (thread["name"], thread["userIdentifier"], thread["metadata"], thread["tags"]) == (
        "Build a CLI",
        "alice",
        {"run_id": "r1"},
        ["f"],
    )
    steps = thread["steps"]
    assert [s["id"] for s in steps] == [parent["id"], child["id"], message["id"]]
    assert steps[1]["parentId"] == parent["id"] and steps[1]["output"] == "found 3 files" and steps[1]["isError"]
    assert steps[0]["input"] == "the task" and steps[2]["input"] == ""  # showInput False hides it
    assert steps[0]["generation"] == {"model": "local", "tokens": 3}
    assert steps[2]["feedback"] == {"forId": message["id"], "id": feedback_id, "value": 0, "comment": "too terse"}

    await history.update_thread(thread_id, name="Renamed", metadata={"run_id": None, "stage": "review"})
    renamed = await history.get_thread(thread_id)
    assert renamed is not None and (renamed["name"], renamed["metadata"]) == ("Renamed", {"stage": "review"})


async def test_threads_are_listed_per_user_newest_first_in_pages(history: SQLAlchemyDataLayer) -> None:
    cl_types = importlib.import_module("chainlit.types")
    user = importlib.import_module("chainlit.user")
    alice = await history.create_user(user.User(identifier="alice"))
    bob = await history.create_user(user.User(identifier="bob"))
    assert alice is not None and bob is not None
    threads: dict[str, str] = {}
    for second, (name, owner) in enumerate([("one", alice), ("two", alice), ("three", alice), ("bobs", bob)]):
        threads[name] = str(uuid.uuid4())
        await history.update_thread(threads[name], name=name, user_id=owner.id)
        with chainlit_context(threads[name]):
            await history.create_step(full_step(threads[name], second * 10, output=f"{name} plan", feedback=None))
    liked = await rows_of_steps(history, threads["one"])
    await history.upsert_feedback(cl_types.Feedback(forId=liked[0], threadId=threads["one"], value=1))

    page = await history.list_threads(cl_types.Pagination(first=2), cl_types.ThreadFilter(userId=alice.id))
    assert [t["name"] for t in page.data] == ["three", "two"] and page.pageInfo.hasNextPage
    cursor = page.pageInfo.endCursor
    rest = await history.list_threads(
        cl_types.Pagination(first=2, cursor=cursor), cl_types.ThreadFilter(userId=alice.id)
    )
    assert [t["name"] for t in rest.data] == ["one"] and not rest.pageInfo.hasNextPage

    bobs = await history.list_threads(cl_types.Pagination(first=10), cl_types.ThreadFilter(userId=bob.id))
    assert [t["name"] for t in bobs.data] == ["bobs"]
    found = await history.list_threads(
        cl_types.Pagination(first=10), cl_types.ThreadFilter(userId=alice.id, search="TWO")
    )
    assert [t["name"] for t in found.data] == ["two"]
    rated = await history.list_threads(
        cl_types.Pagination(first=10), cl_types.ThreadFilter(userId=alice.id, feedback=1)
    )
    assert [t["name"] for t in rated.data] == ["one"]


async def rows_of_steps(history: SQLAlchemyDataLayer, thread_id: str) -> list[str]:
    thread = await history.get_thread(thread_id)
    assert thread is not None
    return [s["id"] for s in thread["steps"]]


def memory_storage() -> BaseStorageClient:
    """A storage provider keeping the files in a dict (Chainlit ships S3, GCS and Azure ones only)."""
    base = importlib.import_module("chainlit.data.storage_clients.base").BaseStorageClient

    class MemoryStorage(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.files: dict[str, bytes | str] = {}

        async def upload_file(
            self,
            object_key: str,
            data: bytes | str,
            mime: str = "",
            overwrite: bool = True,
            content_disposition: Any = None,
        ) -> dict[str, Any]:
            self.files[object_key] = data
            return {"object_key": object_key, "url": f"memory://{object_key}"}

        async def delete_file(self, object_key: str) -> bool:
            return self.files.pop(object_key, None) is not None

        async def get_read_url(self, object_key: str) -> str:
            return f"memory://{object_key}?read"

        async def close(self) -> None:
            pass

    return typing.cast("BaseStorageClient", MemoryStorage())


async def test_elements_are_stored_only_with_a_storage_provider(pg_url: str, history: SQLAlchemyDataLayer) -> None:
    element = importlib.import_module("chainlit.element")
    thread_id = str(uuid.uuid4())
    step = full_step(thread_id, 1)
    with chainlit_context(thread_id):
        await history.create_step(step)
        await history.create_element(element.Text(name="notes", content="hi", for_id=step["id"], thread_id=thread_id))
    assert await rows(pg_url, "SELECT id FROM elements") == [], "without storage Chainlit writes no element"

    storage = memory_storage()
    with_storage = data_layer(pg_url, storage=storage)
    try:
        video = element.Video(
            name="demo.mp4", content=b"\x00\x01", mime="video/mp4", display="side", size="large",
            player_config={"youtube": {"playerVars": {"rel": 0}}}, for_id=step["id"], thread_id=thread_id,
        )  # fmt: skip
        pdf = element.Pdf(name="spec.pdf", content=b"%PDF-1.7", page=3, for_id=step["id"], thread_id=thread_id)
        card = element.CustomElement(name="Card", props={"run": "r1"}, for_id=step["id"], thread_id=thread_id)
        with chainlit_context(thread_id):
            for item in (video, pdf, card):
                await with_storage.create_element(item)
        stored = {r["name"]: r for r in await rows(pg_url, 'SELECT * FROM elements WHERE "threadId" = %s', thread_id)}
        assert stored["demo.mp4"]["playerConfig"] == {"youtube": {"playerVars": {"rel": 0}}}
        assert (stored["demo.mp4"]["size"], stored["demo.mp4"]["display"], stored["spec.pdf"]["page"]) == (
            "large",
            "side",
            3,
        )
        assert stored["Card"]["props"] == {"run": "r1"} and str(stored["Card"]["forId"]) == step["id"]
        assert sorted(storage.files) == sorted(r["objectKey"] for r in stored.values())  # type: ignore[attr-defined]

        thread = await with_storage.get_thread(thread_id)
        assert thread is not None and thread["elements"] is not None
        urls = {e["name"]: e["url"] for e in thread["elements"]}
        assert urls["spec.pdf"] == f"memory://{stored['spec.pdf']['objectKey']}?read"
        # Chainlit's get_element json.loads "props", which psycopg has already decoded from jsonb: the
        # element page (display="page") fails once elements are stored. Fix that before adding storage.
        with pytest.raises(TypeError, match="JSON object must be str"):
            await with_storage.get_element(thread_id, card.id)

        await with_storage.delete_thread(thread_id)
        assert storage.files == {}  # type: ignore[attr-defined]
    finally:
        await with_storage.close()


async def test_deleting_a_thread_takes_its_steps_elements_and_feedbacks(
    pg_url: str, history: SQLAlchemyDataLayer
) -> None:
    cl_types = importlib.import_module("chainlit.types")
    user = importlib.import_module("chainlit.user")
    owner = await history.create_user(user.User(identifier="carol"))
    assert owner is not None
    kept, by_chainlit, by_sql = (str(uuid.uuid4()) for _ in range(3))
    for second, thread_id in enumerate((kept, by_chainlit, by_sql)):
        await history.update_thread(thread_id, name=thread_id, user_id=owner.id)
        step = full_step(thread_id, second)
        with chainlit_context(thread_id):
            await history.create_step(step)
            await history.create_step(full_step(thread_id, second, parentId=step["id"]))
        await history.upsert_feedback(cl_types.Feedback(forId=step["id"], threadId=thread_id, value=1))
        # An element row as a storage provider would leave it (elements are not written without one).
        await rows(
            pg_url, 'INSERT INTO elements (id, "threadId", "forId", name) VALUES (%s, %s, %s, %s) RETURNING id',
            str(uuid.uuid4()), thread_id, step["id"], "file.txt",
        )  # fmt: skip

    await history.delete_thread(by_chainlit)
    await rows(pg_url, "DELETE FROM threads WHERE id = %s RETURNING id", by_sql)  # the foreign keys alone

    for table, column in [("steps", "threadId"), ("elements", "threadId"), ("feedbacks", "threadId")]:
        left = await rows(pg_url, f'SELECT "{column}"::text AS thread FROM {table}')
        assert {r["thread"] for r in left} == {kept}, f"{table} of deleted threads remain"
    assert await history.get_thread(by_chainlit) is None
    with pytest.raises(ValueError, match="Author not found"):
        await history.get_thread_author(by_sql)

    await rows(pg_url, "DELETE FROM users WHERE id = %s RETURNING id", owner.id)
    assert await rows(pg_url, "SELECT id FROM threads") == [], "a deleted user's threads remain"


async def test_history_survives_its_connections_being_ended(pg_url: str, history: SQLAlchemyDataLayer) -> None:
    """A PostgreSQL restart ends every pooled connection: the next read pings, reconnects, answers."""
    from chainlit import user

    made = await history.create_user(user.User(identifier="ana", metadata={"role": "operator"}))
    assert made is not None
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    again = await history.get_user("ana")
    assert again is not None and again.identifier == "ana"
