"""Reading one artifact of a run's bundle for an assistant: by the name the factory recorded, never a path.

A name is taken only if the run's records list it (``Operations.artifacts``), in its canonical form
(``teams.bundle.canonical_name``: no ``..``, no absolute path, no hidden part). The file is then opened
through directory descriptors without following symbolic links, as the bundle writes it: a link or a
folder where the file or one of its folders should be is refused, so nothing outside the bundle is read.
The text is bounded (``MAX_READ_BYTES``); its SHA-256 is compared with the recorded one, so a file
changed on disk since the run wrote it is said to be so.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from factory.errors import InputError, PipelineError
from teams.base import StoredArtifact
from teams.bundle import canonical_name

#: At most this much of one file is returned (an assistant's context is the limit, not the disk).
MAX_READ_BYTES = 256 * 1024
_CHUNK = 64 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


@dataclass(frozen=True)
class ArtifactText:
    """One artifact's text (up to ``MAX_READ_BYTES``) and whether it is still what the run recorded."""

    artifact: StoredArtifact
    text: str
    bytes: int
    sha256: str
    truncated: bool

    @property
    def intact(self) -> bool:
        return self.sha256 == self.artifact.sha256


def artifact_uri(run_id: str, name: str) -> str:
    """The resource URI of one artifact (its name percent-encoded: one URI segment)."""
    return f"factory://runs/{run_id}/artifacts/{quote(name, safe='')}"


def recorded(listed: Sequence[StoredArtifact], name: str, run_id: str) -> StoredArtifact:
    """The record of ``name`` (percent-encoded or not) among a run's artifacts; the last stage's if several
    wrote it (its file is the one on disk). ``InputError`` if the name is malformed or not listed."""
    try:
        wanted = canonical_name(unquote(name))
    except ValueError as exc:
        raise InputError(f"{exc}; see resource factory://runs/{run_id}/artifacts for the names") from None
    found = [a for a in listed if a.name == wanted]
    if not found:
        raise InputError(
            f"run {run_id} has no artifact {wanted!r}; see resource factory://runs/{run_id}/artifacts for the names"
        )
    return max(found, key=lambda a: a.stage_index)


def read_artifact(root: Path, artifact: StoredArtifact, *, limit: int = MAX_READ_BYTES) -> ArtifactText:
    """Read ``artifact`` from the bundle ``root``, strictly inside it (see the module docstring)."""
    *folders, filename = artifact.name.split("/")
    try:
        with _folder(root, folders) as fd, _file(fd, filename) as handle:
            digest, head, size = hashlib.sha256(), bytearray(), 0
            while chunk := os.read(handle, _CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if len(head) < limit:
                    head += chunk[: limit - len(head)]
    except OSError as exc:
        raise _unreadable(root, artifact, exc) from exc
    return ArtifactText(artifact, bytes(head).decode("utf-8", "replace"), size, digest.hexdigest(), size > limit)


@contextlib.contextmanager
def _folder(root: Path, folders: Sequence[str]) -> Iterator[int]:
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in folders:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _file(folder: int, name: str) -> Iterator[int]:
    fd = os.open(name, _FILE_FLAGS, dir_fd=folder)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device would block or never end
            raise OSError(errno.EINVAL, "not a regular file")
        yield fd
    finally:
        os.close(fd)


def _unreadable(root: Path, artifact: StoredArtifact, exc: OSError) -> PipelineError:
    name, run = artifact.name, artifact.run_id
    if exc.errno == errno.ENOENT:
        why = "is not in the bundle any more (moved or deleted)"
    elif exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EINVAL):
        why = "is not a plain file inside the bundle (a symbolic link or a folder is on its way)"
    else:
        why = f"cannot be read ({exc.strerror or exc})"
    return PipelineError(f"artifact {name!r} of run {run} {why} at {str(root)!r}; its record stays in the audit")
