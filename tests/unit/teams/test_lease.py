"""Who may take a run's lease at once: only a dead process of this host and PID namespace."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from teams.lease import new_owner, owner_is_dead


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_dead_process_of_this_host_and_namespace_loses_its_lease_at_once() -> None:
    host, namespace, _pid, tail = new_owner().split(":")
    assert host == socket.gethostname() and namespace
    assert owner_is_dead(f"{host}:{namespace}:{_dead_pid()}:{tail}")
    assert not owner_is_dead(f"{host}:{namespace}:{os.getpid()}:{tail}")  # this very process: alive
    assert not owner_is_dead(f"{host}:{namespace}:{os.getppid()}:{tail}")  # alive


def test_other_hosts_namespaces_and_unknown_owners_wait_for_expiry() -> None:
    host, namespace, _pid, tail = new_owner().split(":")
    dead = _dead_pid()
    assert not owner_is_dead(f"another-host:{namespace}:{dead}:{tail}")
    assert not owner_is_dead(f"{host}:{int(namespace) + 1}:{dead}:{tail}")  # a container sharing the host name
    assert not owner_is_dead(f"{host}::{dead}:{tail}")
    assert not owner_is_dead(f"{host}:{dead}:{tail}")  # an owner of an older format
    assert not owner_is_dead("garbage")
