"""Decide whether root may trust a file or folder, as sshd's StrictModes does.

OpenSSH's `safe_path()` in misc.c accepts a regular file owned by root or
the user and not group- or world-writable. Every folder of its canonical
path up to / must pass the same owner and mode test. fleetd applies that
rule as root, with two differences:

- A folder above the checked path may be group- or world-writable when
  root owns it and it has the sticky bit, as /tmp (mode 1777) has. Other
  users cannot rename or remove entries that root owns in such a folder,
  so they cannot swap the path below it. OpenSSH makes no such exception.
- Every symlink met on the way must be owned by root, and the folders
  that contain it are checked too. OpenSSH checks only the canonical path,
  which leaves out a symlink that its owner could point elsewhere later.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# Linux fails a lookup with ELOOP after 40 symlinks, and so does this walk.
MAX_SYMLINKS = 40


def untrusted_reasons(path: str | Path) -> list[str]:
    """List why root must not load `path`, or return [] when it is safe.

    `path` itself (after symlinks) must be owned by root and not group- or
    world-writable. Each folder looked into on the way from / and each
    symlink followed must be owned by root, and the folders must not be
    group- or world-writable unless they have the sticky bit. Each reason
    names the offending path and the command that fixes it.
    """
    try:
        folders, links, target, info = _walk(os.path.abspath(path))
    except OSError as error:
        where = error.filename or path
        if str(where) != str(path):
            where = f"{path}: {where}"  # a folder or link on the way
        return [f"{where}: cannot read: {error.strerror}"]

    reasons: list[str] = []
    for folder, folder_info in folders:
        reasons.extend(_folder_reasons(folder, folder_info))
    for link, link_info in links:
        if link_info.st_uid != 0:
            reasons.append(
                f"{link}: symlink owned by uid {link_info.st_uid}, expected root "
                f"when fleetd runs as root; run chown -h root {link}"
            )
    reasons.extend(_entry_reasons(target, info))

    return reasons


def _entry_reasons(path: str, info: os.stat_result) -> list[str]:
    reasons = []
    if info.st_uid != 0:
        reasons.append(
            f"{path}: owned by uid {info.st_uid}, expected root when fleetd runs "
            f"as root; run chown root {path}"
        )
    if info.st_mode & 0o022:
        mode = stat.S_IMODE(info.st_mode)
        reasons.append(
            f"{path}: group- or world-writable (mode {mode:04o}), expected no write "
            f"bit for group and others when fleetd runs as root; run chmod go-w {path}"
        )

    return reasons


def _folder_reasons(folder: str, info: os.stat_result) -> list[str]:
    """List why root must not trust the files below `folder`."""
    reasons = []
    if info.st_uid != 0:
        reasons.append(
            f"{folder}: folder owned by uid {info.st_uid}, expected root above "
            f"files that fleetd loads as root; run chown root {folder}"
        )
    sticky = info.st_mode & stat.S_ISVTX and info.st_uid == 0
    if info.st_mode & 0o022 and not sticky:
        mode = stat.S_IMODE(info.st_mode)
        reasons.append(
            f"{folder}: folder is group- or world-writable (mode {mode:04o}), "
            f"expected no write bit for group and others above files that fleetd "
            f"loads as root; run chmod go-w {folder}"
        )

    return reasons


def _walk(
    path: str,
) -> tuple[
    list[tuple[str, os.stat_result]],
    list[tuple[str, os.stat_result]],
    str,
    os.stat_result,
]:
    """Resolve the absolute `path` one component at a time, as the kernel does.

    Returns the folders looked into, the symlinks followed (each with its
    lstat result), and the final path with its stat result. Raises OSError
    when a component is missing or the symlinks loop.
    """
    folders: dict[str, os.stat_result] = {}
    links: dict[str, os.stat_result] = {}
    pending = list(reversed(path.split("/")))
    current = "/"
    followed = 0
    info = os.stat(current)
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)
            info = os.stat(current)
            continue
        if current not in folders:
            folders[current] = os.stat(current)
        candidate = os.path.join(current, name)
        info = os.lstat(candidate)
        if not stat.S_ISLNK(info.st_mode):
            current = candidate
            continue
        followed += 1
        if followed > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        links.setdefault(candidate, info)
        target = os.readlink(candidate)
        if target.startswith("/"):
            current = "/"
        pending.extend(reversed(target.split("/")))
    # The final path gets the stricter test of an entry, even when a
    # trailing "/." or "/.." made the walk look into it.
    folders.pop(current, None)

    return list(folders.items()), list(links.items()), current, info
