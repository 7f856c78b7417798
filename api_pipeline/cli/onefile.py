"""The one-file exe's unpacked copies in %TEMP%: those left by runs stopped by force are removed.

At every start the one-file exe unpacks itself (about 35 MB) into a new ``_MEI...`` folder under
%TEMP%, runs from there, and removes the folder when it ends. A run ended by force (Task
Scheduler's "stop the task if it runs longer than", ``taskkill /F``, a reboot) leaves its folder
behind, and nothing else ever removes it: night after night the disk fills. So each start of the
one-file exe on Windows removes the folders of its own that are stale (:func:`remove_stale_copies`).

A folder is removed only when all of these hold: its name is PyInstaller's (``_MEI`` and letters
or digits); it is a real folder (not a link); it is not this run's (``sys._MEIPASS``); it was
last changed more than a day ago; it holds this program's files (``api_pipeline\\data``); its
Python DLL can be deleted, which Windows refuses while any process has it loaded (every running
copy has it loaded from its own folder: a run of a week is still running after a day); and it
can then be renamed, which Windows refuses while any process has a file in it open. Renamed to
``<name>.removing`` first, so a removal cut short is finished by a later start; only this module
makes such names. The one-folder build runs in place and unpacks nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

STALE_AFTER = 24 * 3600.0  # seconds: no night's run is still starting a day later
UNPACKED_NAME = re.compile(r"_MEI[0-9A-Za-z]+")
CLAIMED_SUFFIX = ".removing"
OWN_FILES = Path("api_pipeline") / "data"  # the schema the exe carries: a folder holding it is this program's


def remove_stale_copies(
    temp: Path,
    running: Path | None,
    *,
    now: float,
    stale_after: float = STALE_AFTER,
    delete: Callable[[Path], object] = os.remove,
    rename: Callable[[Path, Path], object] = os.rename,
) -> list[str]:
    """Remove this program's unpacked copies in ``temp`` that are stale and not in use; their names.

    ``running`` (this run's own folder) is never touched. ``delete`` (of the Python DLL) and
    ``rename`` (claiming the folder) are what Windows refuses while a copy is running from it.
    Never raises.
    """
    try:
        entries = list(os.scandir(temp))
    except OSError:
        return []
    removed = []
    for entry in entries:
        path = Path(entry.path)
        claimed = entry.name.endswith(CLAIMED_SUFFIX)
        name = entry.name.removesuffix(CLAIMED_SUFFIX)
        if not UNPACKED_NAME.fullmatch(name) or _same_folder(path, running) or not _plain_folder(entry):
            continue
        if not claimed:
            if not _stale(entry, now, stale_after) or not (path / OWN_FILES).is_dir():
                continue
            if not _python_dll_deleted(path, delete):
                continue
            target = path.with_name(entry.name + CLAIMED_SUFFIX)
            try:
                rename(path, target)  # refused while a running copy has a file in it open
            except OSError:
                continue
            path = target
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(name)
    return removed


def clean_up_after_runs_stopped_by_force() -> list[str]:
    """At the start of the one-file exe on Windows: :func:`remove_stale_copies` beside this run's own folder.

    Does nothing anywhere else: the one-folder build, ``python -m api_pipeline``, and other
    systems, where a folder in use can be renamed, so renaming it proves nothing.
    """
    running = getattr(sys, "_MEIPASS", None)
    if sys.platform != "win32" or not getattr(sys, "frozen", False) or not running:
        return []
    here = Path(running)
    if not UNPACKED_NAME.fullmatch(here.name):
        return []
    with contextlib.suppress(Exception):  # housekeeping: it must never stop a run
        return remove_stale_copies(here.parent, here, now=time.time())
    return []


def _python_dll_deleted(folder: Path, delete: Callable[[Path], object]) -> bool:
    """Delete the folder's Python DLLs (python311.dll first); False as soon as one is loaded by a running copy."""
    for dll in sorted(folder.glob("python3*.dll"), key=lambda path: (-len(path.name), path.name)):
        try:
            delete(dll)
        except FileNotFoundError:
            continue
        except OSError:  # Windows: "Access is denied" while a process has the DLL loaded
            return False
    return True


def _same_folder(path: Path, running: Path | None) -> bool:
    if running is None:
        return False
    try:
        return os.path.samefile(path, running)
    except OSError:
        return os.path.normcase(os.path.abspath(path)) == os.path.normcase(os.path.abspath(running))


def _plain_folder(entry: os.DirEntry[str]) -> bool:
    """A folder itself, not a link or a junction to one somewhere else."""
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    reparse = getattr(info, "st_file_attributes", 0) & getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0x400)
    return stat.S_ISDIR(info.st_mode) and not reparse


def _stale(entry: os.DirEntry[str], now: float, stale_after: float) -> bool:
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime > stale_after
    except OSError:
        return False
