"""A run's lease: which process drives the run, and the fencing token every commit of it checks.

One driver per run (DESIGN §5). The lease is a row, not a session lock, so it survives a lost
connection and works through a transaction-mode pooler (PgBouncer), where session advisory locks do
not. Taking it raises the token; every commit of the run's state checks owner and token in its own
transaction, so a driver that lost the run (it stalled past the lease's lifetime and another process
took over) cannot commit anything more. A heartbeat renews the lease while the run is driven and
marks it lost as soon as it finds another owner, so the driver stops before its next model call.

A lease ends when its driver lets go, when it expires, or at once when its owner is a process of
this host that no longer exists (a killed ``factory run`` is resumed without waiting for expiry).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass

from factory.errors import LeaseLost, RunBusy


@dataclass
class Lease:
    """This process's hold on one run: pass it to every write of the run's state."""

    run_id: str
    owner: str
    token: int
    lost: str | None = None  # why the run was lost, once the heartbeat finds out
    #: ``time.monotonic()`` until which the lease surely holds: its last renewal's start plus its
    #: lifetime (the database counts from later, so this errs early).
    held_until: float = 0.0

    def held_for(self) -> float:
        """Seconds the lease surely still holds the run (0 or less: renew it before relying on it)."""
        return self.held_until - time.monotonic()

    def check(self) -> None:
        """``LeaseLost`` if the heartbeat found the run taken over (cheap: no round trip)."""
        if self.lost is not None:
            raise LeaseLost(lost_message(self.run_id, self.lost))


def _pid_namespace() -> str:
    """This process's PID namespace (containers sharing a host name may each have their own), or ''."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def new_owner() -> str:
    """A name unique to this lease holder: host, PID namespace, process and a random part."""
    return f"{socket.gethostname()}:{_pid_namespace()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def owner_is_dead(owner: str) -> bool:
    """Whether ``owner`` was a process of this host and PID namespace that no longer runs (its lease
    can go at once). Other hosts or namespaces, and live (or reused) process ids, count as alive:
    the lease then expires instead."""
    parts = owner.split(":")
    if len(parts) != 4:
        return False
    host, namespace, pid_text, _ = parts
    if host != socket.gethostname() or not namespace or namespace != _pid_namespace() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by another user
        return False
    return False


def busy(run_id: str) -> RunBusy:
    return RunBusy(
        f"run {run_id} is being driven by another process (a `factory run`, `resume` or `worker`);"
        " wait for it, or stop that process and try again"
    )


def lost_message(run_id: str, why: str) -> str:
    return (
        f"this process no longer holds run {run_id} ({why}); another process drives it, or an operator"
        f" cancelled it, and this one"
        f" committed nothing more of it (a model call it had made is audited as never committed);"
        f" follow the run with `factory audit show {run_id}`"
    )
