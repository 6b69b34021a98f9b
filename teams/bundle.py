"""A run's bundle on disk: artifact names, and writing files strictly inside the bundle.

Every artifact name has one canonical form (``canonical_name``), decided before anything is stored:

- a relative POSIX path of folders and a file name, each of letters, digits, ``.``, ``_`` and
  ``-``, at most ``MAX_PART_CHARS`` long, at most ``MAX_DEPTH`` deep, ``MAX_NAME_CHARS`` in all;
- ``.`` segments are dropped (``./docs/a.md`` and ``docs/./a.md`` are ``docs/a.md``);
- refused: an empty name, an absolute one, ``..``, an empty segment (``a//b``), a hidden part
  (``.git``), a name ending in ``/`` or ``/.`` (a folder, not a file) and so ``.`` itself,
  backslashes, spaces, control and non-ASCII characters, and the names the factory writes in the
  bundle root itself (``RESERVED_NAMES``, compared ignoring case).

Files are written through directory descriptors opened without following symbolic links, so a
file lands in the bundle or not at all: a symlink or a file where a folder should be is refused,
and the temporary file of an atomic write is a hidden name (no artifact can have one) created
beside its target and removed if the write fails.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory.errors import PipelineError

if TYPE_CHECKING:  # results validates names with ``canonical_name``: this module cannot import it
    from teams.results import Artifact

MANIFEST_NAME = "manifest.json"
#: What the factory itself writes in the bundle root; no artifact may take these names (any case).
RESERVED_NAMES = frozenset({MANIFEST_NAME})

MAX_NAME_CHARS = 200
MAX_PART_CHARS = 100
MAX_DEPTH = 8
_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_EXAMPLE = "e.g. 'docs/scope.md'"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _shown(text: str) -> str:
    return repr(text[:60] + ("..." if len(text) > 60 else ""))


def canonical_name(name: str) -> str:
    """The one canonical form of an artifact name (see the module), or ``ValueError`` saying why not."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an artifact name must be a non-empty relative path, {_EXAMPLE}")
    if len(name) > 2 * MAX_NAME_CHARS:
        raise ValueError(f"artifact name {_shown(name)} is over {MAX_NAME_CHARS} characters; shorten it")
    if name.startswith("/"):
        raise ValueError(f"artifact name {_shown(name)} is absolute; use a relative path inside the bundle, {_EXAMPLE}")
    segments = name.split("/")
    if segments[-1] in ("", "."):
        raise ValueError(f"artifact name {_shown(name)} names a folder, not a file; name the file, {_EXAMPLE}")
    parts = [s for s in segments if s != "."]
    for part in parts:
        _check_part(name, part)
    if len(parts) > MAX_DEPTH:
        raise ValueError(f"artifact name {_shown(name)} is over {MAX_DEPTH} folders deep; flatten it")
    canonical = "/".join(parts)
    if len(canonical) > MAX_NAME_CHARS:
        raise ValueError(f"artifact name {_shown(name)} is over {MAX_NAME_CHARS} characters; shorten it")
    if canonical.casefold() in RESERVED_NAMES:
        raise ValueError(f"artifact name {_shown(name)} is written by the factory itself; choose another name")
    return canonical


def _check_part(name: str, part: str) -> None:
    if part == "":
        raise ValueError(f"artifact name {_shown(name)} has an empty folder name ('//'); remove it")
    if part == "..":
        raise ValueError(
            f"artifact name {_shown(name)} contains '..'; use a relative path inside the bundle, {_EXAMPLE}"
        )
    if part.startswith("."):
        raise ValueError(f"artifact name {_shown(name)} has a hidden part {_shown(part)}; drop the leading '.'")
    if len(part) > MAX_PART_CHARS:
        raise ValueError(f"artifact name {_shown(name)} has a part over {MAX_PART_CHARS} characters; shorten it")
    if not _PART.fullmatch(part):
        raise ValueError(
            f"artifact name {_shown(name)} may hold only letters, digits, '.', '_', '-' and '/' (no spaces,"
            f" backslashes or control characters), {_EXAMPLE}"
        )


def sha256_text(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def _refused(exc: OSError) -> bool:
    """An open that met a symbolic link (``O_NOFOLLOW``) or a file where a folder should be."""
    return exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST)


@contextlib.contextmanager
def _folder(root: Path, folders: Sequence[str]) -> Iterator[int]:
    """A descriptor of ``root``/``folders``, made as needed; a symlink or a file on the way is refused."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        if not _refused(exc):
            raise
        raise PipelineError(
            f"the bundle {str(root)!r} is a file or a symbolic link, not a folder; nothing was written:"
            " move it away, or resume with another --out"
        ) from exc
    try:
        for depth, part in enumerate(folders):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if not _refused(exc):
                    raise
                where = "/".join(folders[: depth + 1])
                raise PipelineError(
                    f"{where!r} in the bundle is a file or a symbolic link, not a folder; nothing was written"
                    " through it: rename the artifacts under it"
                ) from exc
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _write_inside(root: Path, name: str, data: str) -> Path:
    """Write ``data`` to ``root``/``name`` (canonical) atomically, strictly inside ``root``."""
    try:
        payload = data.encode("utf-8")
    except UnicodeEncodeError as exc:  # results refuse such text; this is the last guard
        raise PipelineError(f"{name!r} holds text that is not valid Unicode; nothing was written") from exc
    *folders, filename = name.split("/")
    with _folder(root, folders) as fd:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.stat(filename, dir_fd=fd, follow_symlinks=False).st_mode):
                raise PipelineError(
                    f"{name!r} in the bundle is a folder or a symbolic link, not a file; nothing was written:"
                    " rename the artifact"
                )
        tmp = f".{secrets.token_hex(8)}.tmp"  # hidden, beside its target: no artifact can be named like it
        out = os.open(tmp, _FILE_FLAGS, 0o666, dir_fd=fd)
        try:
            with os.fdopen(out, "wb") as handle:
                handle.write(payload)
            os.replace(tmp, filename, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise
    return root / name


def write_artifact(root: Path, artifact: Artifact) -> Path:
    """Write one artifact as a plain file inside ``root`` (made if missing); any refusal or file
    system error is a ``PipelineError`` naming the artifact."""
    try:
        name = canonical_name(artifact.name)
    except ValueError as exc:
        raise PipelineError(f"{exc}; nothing was written") from exc
    try:
        return _write_inside(root, name, artifact.content)
    except OSError as exc:
        raise PipelineError(
            f"artifact {name!r} cannot be written to the bundle {str(root)!r} ({exc.strerror or exc});"
            " check that folder, or revise the stage with feedback on its file names"
        ) from exc


def write_artifacts(root: Path, artifacts: Sequence[Artifact]) -> None:
    """Write a stage's artifacts (``write_artifact`` each)."""
    for artifact in artifacts:
        write_artifact(root, artifact)


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write the bundle's ``MANIFEST_NAME`` (the one name no artifact can take)."""
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    try:
        return _write_inside(root, MANIFEST_NAME, text)
    except OSError as exc:
        raise PipelineError(
            f"the manifest cannot be written to the bundle {str(root)!r} ({exc.strerror or exc}); check that folder"
        ) from exc
