"""AutoGen stays out of start-up: every CLI command imports the migrations (and group chat's store
with them) and most the wiring; only running a discussion loads AutoGen."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def loaded(code: str) -> set[str]:
    probe = f"import sys; {code}; print(sorted({{m.split('.')[0] for m in sys.modules}}))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    return set(ast.literal_eval(done.stdout))


def test_the_migrations_wiring_and_group_chats_models_import_no_autogen() -> None:
    modules = loaded(
        "import factory.migrations, factory.wiring, teams.groupchat; from teams.groupchat import GroupChatStore"
    )
    assert {"autogen_agentchat", "autogen_core"}.isdisjoint(modules) and "teams" in modules


def test_the_service_brings_autogen_when_used() -> None:
    assert {"autogen_agentchat", "autogen_core"} <= loaded("from teams.groupchat import GroupChats")
