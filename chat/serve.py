"""Serving the chat: its files under the data dir, its login, its page kept on this machine.

Chainlit writes ``.chainlit/``, ``.files/`` and ``chainlit.md`` into its app root and reads its
configuration from there when first imported, so the root (``<data dir>/chat``) is prepared and
``CHAINLIT_APP_ROOT`` set before anything imports ``chainlit``. Login: with accounts
(``factory users add``) the login form is required; with none the person at a loopback address is
its operator; bound to any other address with no account, the chat refuses to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from factory.errors import ConfigError
from factory.listen import port_free
from factory.operations import Operations
from factory.settings import Settings

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent
APP = PACKAGE / "app.py"
#: Links of Chainlit's page to other hosts (Google Fonts, a KaTeX stylesheet on a CDN, a banner image).
_OFFSITE = re.compile(r"""<link[^>]*href="https?://[^"]*"[^>]*/?>\s*|<meta[^>]*content="https?://[^"]*"[^>]*>\s*""")
README = """# AI Software Factory

Type a requirement in the **Pipeline** profile to run it through the teams, or pick the sample.
`/attention` (or "what needs my attention?") lists what waits on you. Profiles: Pipeline, Team chat,
Group chat (several teams discuss a topic with you in the room), Project Q&A, Decisions.
"""
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="6" fill="#1f2937"/>'
    '<path d="M7 22V12l6 4v-4l6 4v-4l6 4v6z" fill="#f59e0b"/></svg>'
)


ICONS = {"pipeline": "▶", "team": "💬", "qa": "?", "decisions": "✋"}


def _icon(glyph: str) -> str:
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><rect width="64" height="64" rx="14"'
        f' fill="#1f2937"/><text x="32" y="43" font-size="30" text-anchor="middle" fill="#f59e0b">{glyph}</text></svg>'
    )


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


def prepare_root(settings: Settings, host: str, port: int) -> Path:
    """The app root under the data dir, with the factory's Chainlit configuration; returns it."""
    root = settings.data_dir / "chat"
    (root / ".chainlit").mkdir(parents=True, exist_ok=True)
    (root / "public").mkdir(exist_ok=True)
    origins = {f"http://{host}:{port}", f"http://127.0.0.1:{port}", f"http://localhost:{port}"}
    template = (PACKAGE / "chainlit.toml").read_text()
    listed = ", ".join(json.dumps(o) for o in sorted(origins))
    (root / ".chainlit" / "config.toml").write_text(template.format(origins=listed))
    (root / "public" / "theme.json").write_text(json.dumps({"custom_fonts": []}))  # no Google Fonts
    (root / "public" / "favicon.svg").write_text(FAVICON)
    for name, glyph in ICONS.items():
        (root / "public" / f"{name}.svg").write_text(_icon(glyph))
    (root / "chainlit.md").write_text(README)
    return root


def auth_secret(settings: Settings, root: Path) -> str:
    """``CHAINLIT_AUTH_SECRET`` if set, else one made once and kept (0600) under the data dir."""
    given = os.environ.get("CHAINLIT_AUTH_SECRET")
    if given:
        return given
    path = root / "auth.secret"
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path} can be read by other users: chmod 600 it (or delete it to make a new one)")
        return path.read_text().strip()
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret)
    return secret


def local_user() -> str:
    try:
        import getpass

        name = getpass.getuser()
    except (KeyError, OSError):
        name = "operator"
    return re.sub(r"[^A-Za-z0-9._@-]", "-", name)[:64] or "operator"


def _offsite_free(original: Callable[[str], str]) -> Callable[[str], str]:
    def page(root_path: str) -> str:
        return _OFFSITE.sub("", original(root_path))

    return page


async def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[str, str], Awaitable[None] | None] | None = None,
    on_stop: Callable[[], Awaitable[None] | None] | None = None,
    mount: Callable[[Any, Operations], None] | None = None,
) -> None:
    """Open the factory, then serve the chat until cancelled or SIGINT/SIGTERM (uvicorn's own).

    ``mount(app, ops)``: serve more beside the chat on its app and operations (``factory up`` mounts the
    REST API at ``/api`` this way).

    ``on_ready(url, login)`` runs once it listens; ``on_stop()`` when it stops serving, before
    Chainlit's shutdown, which ends the process (``os._exit(0)``): no ``finally`` of a caller runs
    after a signal stopped the server."""
    from chat import access
    from chat.runtime import runtime

    port_free(host, port)
    runtime.configure(settings)
    factory = await runtime.open()
    try:
        accounts = await access.count(factory)
        loopback = is_loopback(host)
        if not accounts and not loopback:
            raise ConfigError(
                f"the chat on {host} would be open to the network without a login: create an account first"
                " (`factory users add NAME --role operator`), or bind to 127.0.0.1"
            )
        root = prepare_root(settings, host, port)
        os.environ["CHAINLIT_APP_ROOT"] = str(root)
        os.environ["CHAINLIT_AUTH_SECRET"] = auth_secret(settings, root)
        os.environ["FACTORY_CHAT_AUTH"] = "password" if accounts else "local"
        os.environ["FACTORY_CHAT_LOCAL_USER"] = local_user()
        app = _load()
        if mount is not None:
            mount(app, runtime.ops)
        if on_stop is not None:
            _before_shutdown(app, on_stop)
        import uvicorn

        # log_config=None: uvicorn's lines go through the factory's handlers (its format, JSON or
        # text, and its redaction) instead of uvicorn's own text handlers.
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", ws="auto", lifespan="on",
                                timeout_graceful_shutdown=5, log_config=None)  # fmt: skip
        server = uvicorn.Server(config)
        login = "login required (factory users)" if accounts else f"no login: you are {local_user()} (loopback only)"
        watcher = asyncio.create_task(_announce(server, host, port, login, on_ready))
        try:
            await server.serve()
        finally:
            watcher.cancel()
    finally:
        await runtime.close()


def _load() -> Any:
    import chainlit.server as server
    from chainlit.auth import ensure_jwt_secret
    from chainlit.config import config, load_module
    from chainlit.markdown import init_markdown

    from chat import metrics

    if not getattr(server.get_html_template, "_offsite_free", False):
        page = _offsite_free(server.get_html_template)
        page._offsite_free = True  # type: ignore[attr-defined]
        server.get_html_template = page
    config.run.module_name = str(APP)
    load_module(str(APP))
    ensure_jwt_secret()
    init_markdown(config.root)
    metrics.mount(server.app)  # GET /metrics, outside the login
    return server.app


def _before_shutdown(app: Any, on_stop: Callable[[], Awaitable[None] | None]) -> None:
    """Run ``on_stop`` at the start of the app's shutdown, inside Chainlit's lifespan (whose end
    exits the process)."""
    chainlit_lifespan = getattr(app.router.lifespan_context, "_chainlit", app.router.lifespan_context)

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with chainlit_lifespan(app_) as state:
            try:
                yield state
            finally:
                done = on_stop()
                if done is not None:
                    await done

    lifespan._chainlit = chainlit_lifespan  # type: ignore[attr-defined]  # a later serve() wraps the original
    app.router.lifespan_context = lifespan


async def _announce(
    server: Any, host: str, port: int, login: str, on_ready: Callable[[str, str], Awaitable[None] | None] | None
) -> None:
    while not server.started:  # noqa: ASYNC110  (uvicorn offers no event for it)
        await asyncio.sleep(0.05)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if on_ready is not None:
        done = on_ready(url, login)
        if done is not None:
            await done
