"""The chat tables carry a column, of a fitting type, for every key the installed Chainlit writes; the
factory's database URL becomes SQLAlchemy's. A Chainlit upgrade that adds or retypes a key fails here
(``SQLAlchemyDataLayer`` would otherwise lose the whole row with a logged warning)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import make_url

from chat.data_layer import data_layer, json_encode_dicts, sqlalchemy_url
from chat.tables import DDL, MIGRATIONS
from factory.errors import ConfigError

# Keys that are other tables, not columns: ThreadDict carries its steps and elements.
RELATIONS = {("threads", "steps"): "steps", ("threads", "elements"): "elements"}
# Chainlit converts before writing: create_step stores str(showInput).lower() ("true", "json", ...).
CONVERTED = {("steps", "showInput"): "text"}


@pytest.fixture(scope="session")
def chainlit(tmp_path_factory: pytest.TempPathFactory) -> types.ModuleType:
    """Chainlit, imported with its app root in a temporary folder: the first import writes
    ``.chainlit/`` and ``.files/`` there (by default into the working directory, the repository)."""
    if "chainlit" not in sys.modules and "CHAINLIT_APP_ROOT" not in os.environ:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("CHAINLIT_APP_ROOT", str(tmp_path_factory.mktemp("chainlit")))
            return importlib.import_module("chainlit")
    return importlib.import_module("chainlit")


def ddl_columns() -> dict[str, dict[str, str]]:
    """Table -> column -> SQL type, read from the DDL text."""
    tables: dict[str, dict[str, str]] = {}
    for name, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", DDL, flags=re.S):
        columns = re.findall(r'^\s*"(\w+)" ([a-z]+(?:\[\])?)', body, flags=re.M)
        tables[name] = dict(columns)
    return tables


def _kind(hint: Any) -> str:
    if get_origin(hint) is Literal:
        kinds = {_kind(type(value)) for value in get_args(hint)}
        assert len(kinds) == 1, f"a Literal of mixed types: {hint}"
        return kinds.pop()
    if hint is bool:
        return "boolean"
    if hint is int:
        return "integer"
    if hint is str:
        return "text"
    if hint is dict or get_origin(hint) is dict or typing.is_typeddict(hint):
        return "jsonb"
    if get_origin(hint) is list and get_args(hint) == (str,):
        return "text[]"
    raise AssertionError(f"no SQL type known for {hint}: decide the column type and add it to _kind")


def sql_type(table: str, key: str, hint: Any) -> str:
    """The column type a value of this type hint needs."""
    if (table, key) in CONVERTED:
        return CONVERTED[table, key]
    optional = get_origin(hint) in (Union, types.UnionType)
    members = [a for a in get_args(hint) if a is not type(None)] if optional else [hint]
    kinds = {_kind(member) for member in members}
    assert len(kinds) == 1, f"{table}.{key} may be any of {kinds}: decide how Chainlit stores it (CONVERTED)"
    kind = kinds.pop()
    if kind == "text" and (key == "id" or key.endswith("Id")):
        return "uuid"  # Chainlit's ids are uuid4 strings
    return kind


def written_keys(chainlit: types.ModuleType) -> dict[str, dict[str, Any]]:
    """Table -> key -> type hint, for every key Chainlit's SQLAlchemyDataLayer may write."""
    step = importlib.import_module("chainlit.step")
    element = importlib.import_module("chainlit.element")
    cl_types = importlib.import_module("chainlit.types")
    user = importlib.import_module("chainlit.user")
    user_hints = typing.get_type_hints(user.PersistedUser)
    forward = {"StepDict": step.StepDict, "ElementDict": element.ElementDict}
    return {
        "users": {f.name: user_hints[f.name] for f in dataclasses.fields(user.PersistedUser)},
        "threads": typing.get_type_hints(cl_types.ThreadDict, localns=forward),
        "steps": typing.get_type_hints(step.StepDict),
        "elements": typing.get_type_hints(element.ElementDict),
        # upsert_feedback writes the Feedback dataclass (it has threadId); get_thread reads FeedbackDict.
        "feedbacks": {**typing.get_type_hints(cl_types.FeedbackDict), **typing.get_type_hints(cl_types.Feedback)},
    }


def test_the_factory_migrations_import_neither_chainlit_nor_sqlalchemy() -> None:
    """Every CLI start imports the migrations: Chainlit takes seconds and writes files where it runs."""
    probe = "import sys, factory.migrations; print(sorted({m.split('.')[0] for m in sys.modules}))"
    repo = Path(__file__).resolve().parents[3]
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, check=True, timeout=60
    )
    assert {"chainlit", "sqlalchemy"}.isdisjoint(ast.literal_eval(loaded.stdout)) and "factory" in loaded.stdout


def test_the_migration_is_named_and_idempotent_ddl() -> None:
    assert MIGRATIONS == [("0501_chat_tables", DDL)]
    statements = [s.strip() for s in DDL.split(";") if s.strip()]
    rerunnable = ("CREATE TABLE IF NOT EXISTS", "CREATE INDEX IF NOT EXISTS")
    assert statements and all(s.startswith(rerunnable) for s in statements)


def test_every_key_chainlit_writes_has_a_column_of_a_fitting_type(chainlit: types.ModuleType) -> None:
    columns = ddl_columns()
    keys = written_keys(chainlit)
    assert set(columns) == set(keys)
    missing: list[str] = []
    mistyped: list[str] = []
    for table, hints in keys.items():
        for key, hint in hints.items():
            if (table, key) in RELATIONS:
                assert "threadId" in columns[RELATIONS[table, key]]
                continue
            if key not in columns[table]:
                missing.append(f"{table}.{key}")
            elif columns[table][key] != sql_type(table, key, hint):
                mistyped.append(f"{table}.{key} is {columns[table][key]}, needs {sql_type(table, key, hint)}")
    assert not missing, (
        f"Chainlit writes keys the chat tables lack: {missing}; add them (a new migration in chat/tables.py)"
    )
    assert not mistyped, f"chat tables columns of the wrong type: {mistyped}"


def test_the_steps_columns_the_brief_named_are_there() -> None:
    steps = ddl_columns()["steps"]
    for key in ("modes", "autoCollapse", "icon", "defaultOpen", "command", "showInput", "language", "generation"):
        assert key in steps
    assert steps["waitForAnswer"] == steps["isError"] == "boolean"


def test_every_table_chainlit_filters_on_is_indexed() -> None:
    filtered = [("threads", "userId"), ("steps", "threadId"), ("elements", "threadId"), ("feedbacks", "forId")]
    for table, column in filtered:
        assert re.search(rf'CREATE INDEX IF NOT EXISTS \w+ ON {table} \("{column}"', DDL), f"{table}.{column} unindexed"


def test_deleting_a_thread_cascades_to_its_steps_elements_and_feedbacks() -> None:
    assert re.search(r'"threadId" uuid NOT NULL REFERENCES threads \("id"\) ON DELETE CASCADE', DDL)  # steps
    assert len(re.findall(r'REFERENCES threads \("id"\) ON DELETE CASCADE', DDL)) == 3  # steps, elements, feedbacks
    assert '"forId" uuid NOT NULL REFERENCES steps ("id") ON DELETE CASCADE' in DDL


# --- the database URL ---

EMBEDDED = "postgresql://postgres:@/postgres?host=/tmp/pytest-of-me/pytest-1/pg0/pg"  # pgserver's get_uri()


@pytest.mark.parametrize(
    ("factory_url", "expected"),
    [
        ("postgresql://factory@127.0.0.1:5432/factory", "postgresql+psycopg://factory@127.0.0.1:5432/factory"),
        (
            "postgres://u:p%40ss@db.example:6432/f?sslmode=require",
            "postgresql+psycopg://u:p%40ss@db.example:6432/f?sslmode=require",
        ),
        (EMBEDDED, "postgresql+psycopg://postgres:@/postgres?host=/tmp/pytest-of-me/pytest-1/pg0/pg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_the_factory_url_becomes_sqlalchemys_psycopg_url(factory_url: str, expected: str) -> None:
    assert sqlalchemy_url(factory_url) == expected


def test_a_tcp_url_reaches_psycopg_with_host_port_and_the_decoded_password() -> None:
    url = sqlalchemy_url("postgresql://u:p%40ss@10.0.0.5:6432/f?sslmode=require")
    _, kwargs = PGDialect_psycopg().create_connect_args(make_url(url))
    assert kwargs == {
        "host": "10.0.0.5",
        "port": 6432,
        "dbname": "f",
        "user": "u",
        "password": "p@ss",
        "sslmode": "require",
    }


def test_the_embedded_socket_url_reaches_psycopg_as_a_socket_directory() -> None:
    _, kwargs = PGDialect_psycopg().create_connect_args(make_url(sqlalchemy_url(EMBEDDED)))
    assert kwargs == {"host": "/tmp/pytest-of-me/pytest-1/pg0/pg", "dbname": "postgres", "user": "postgres"}


@pytest.mark.parametrize(
    "bad",
    [
        "mysql://u:hunter2@h/db",
        "host=/tmp dbname=f password=hunter2",
        "hunter2:x@h/db",
        "postgresql://u:hunter2@[::1/db",
    ],
)
def test_a_url_that_is_not_postgresql_is_refused_without_quoting_it(bad: str) -> None:
    with pytest.raises(ConfigError, match="FACTORY_DATABASE_URL") as caught:
        sqlalchemy_url(bad)
    assert "hunter2" not in str(caught.value)


def test_a_url_sqlalchemy_cannot_read_is_refused_without_quoting_it(chainlit: types.ModuleType) -> None:
    for bad in ("postgresql://u:hunter2@h1:5432,h2:5433/db", "postgresql://u:hunter2@h:port/db"):
        with pytest.raises(ConfigError, match="FACTORY_DATABASE_URL") as caught:
            data_layer(bad)
        assert "hunter2" not in str(caught.value)


def test_dict_parameters_become_json_text_and_nothing_else_changes() -> None:
    params = {"modes": {"model": "fast"}, "tags": ["a"], "metadata": '{"x": 1}', "page": 2, "none": None}
    assert json_encode_dicts(params) == {**params, "modes": '{"model": "fast"}'}
    assert json_encode_dicts([{"a": {"b": 1}}]) == [{"a": '{"b": 1}'}]
    assert json_encode_dicts(("x", 1)) == ("x", 1)
