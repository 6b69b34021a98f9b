"""The tables Chainlit's ``SQLAlchemyDataLayer`` reads and writes; Chainlit ships no DDL of its own.

Plain SQL text, no Chainlit or SQLAlchemy import: ``factory.migrations`` imports it on every CLI start.

The names are Chainlit's (quoted camelCase). ``create_step``, ``create_element`` and
``upsert_feedback`` insert every non-empty key of the dict they are given as a column, so each key of
``StepDict``, ``ElementDict``, ``Feedback`` and the user fields has a column here, checked against the
installed Chainlit by ``tests/unit/chat/test_chat_tables.py``. Timestamps are ``text``: Chainlit writes
ISO strings and asserts it reads strings back. Few ``NOT NULL``s: the data layer logs and swallows
every SQL error, so a constraint Chainlit does not expect would only lose a message silently.
``steps."parentId"`` has no foreign key for the same reason: a nested step may be written before its
parent (each write is its own task). Deleting a thread removes its steps, elements and feedbacks
(cascades), as ``delete_thread`` expects; deleting a user removes that user's threads.
"""

from __future__ import annotations

DDL = """
CREATE TABLE IF NOT EXISTS users (
    "id" uuid PRIMARY KEY,
    "identifier" text NOT NULL UNIQUE,
    "display_name" text,
    "metadata" jsonb NOT NULL DEFAULT '{}',
    "createdAt" text
);

CREATE TABLE IF NOT EXISTS threads (
    "id" uuid PRIMARY KEY,
    "createdAt" text,
    "name" text,
    "userId" uuid REFERENCES users ("id") ON DELETE CASCADE,
    "userIdentifier" text,
    "tags" text[],
    "metadata" jsonb
);
CREATE INDEX IF NOT EXISTS threads_user_id ON threads ("userId");

CREATE TABLE IF NOT EXISTS steps (
    "id" uuid PRIMARY KEY,
    "name" text,
    "type" text,
    "threadId" uuid NOT NULL REFERENCES threads ("id") ON DELETE CASCADE,
    "parentId" uuid,
    "command" text,
    "modes" jsonb,
    "streaming" boolean,
    "waitForAnswer" boolean,
    "isError" boolean,
    "metadata" jsonb,
    "tags" text[],
    "input" text,
    "output" text,
    "createdAt" text,
    "start" text,
    "end" text,
    "generation" jsonb,
    "showInput" text,
    "defaultOpen" boolean,
    "autoCollapse" boolean,
    "language" text,
    "icon" text,
    "feedback" jsonb
);
CREATE INDEX IF NOT EXISTS steps_thread_id ON steps ("threadId", "createdAt");
CREATE INDEX IF NOT EXISTS steps_parent_id ON steps ("parentId");

CREATE TABLE IF NOT EXISTS elements (
    "id" uuid PRIMARY KEY,
    "threadId" uuid REFERENCES threads ("id") ON DELETE CASCADE,
    "type" text,
    "chainlitKey" text,
    "path" text,
    "url" text,
    "objectKey" text,
    "name" text,
    "display" text,
    "size" text,
    "language" text,
    "page" integer,
    "props" jsonb,
    "autoPlay" boolean,
    "playerConfig" jsonb,
    "forId" uuid,
    "mime" text
);
CREATE INDEX IF NOT EXISTS elements_thread_id ON elements ("threadId");
CREATE INDEX IF NOT EXISTS elements_for_id ON elements ("forId");

CREATE TABLE IF NOT EXISTS feedbacks (
    "id" uuid PRIMARY KEY,
    "forId" uuid NOT NULL REFERENCES steps ("id") ON DELETE CASCADE,
    "threadId" uuid REFERENCES threads ("id") ON DELETE CASCADE,
    "value" integer NOT NULL,
    "comment" text
);
CREATE INDEX IF NOT EXISTS feedbacks_for_id ON feedbacks ("forId");
CREATE INDEX IF NOT EXISTS feedbacks_thread_id ON feedbacks ("threadId");
"""

MIGRATIONS: list[tuple[str, str]] = [("0501_chat_tables", DDL)]
