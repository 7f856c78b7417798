"""The ``.env`` file: where it is looked for, reading it, and the lines it cannot read (DESIGN §3).

``--env-file`` if given, else ``.env`` in the current folder, else next to the program (Task
Scheduler starts programs in System32); in each folder the earlier tool's ``env.txt`` when there
is no ``.env``. :func:`api_pipeline.config.load_settings` reads what is found.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

from api_pipeline.errors import ConfigError

# ``env.txt``: the earlier tool's name for the file, read where there is no ``.env``.
ENV_FILE_NAMES = (".env", "env.txt")


def env_file_folders(cwd: Path, executable_dir: Path) -> list[Path]:
    """Where ``.env`` is looked for, in order: the current folder, then the program's."""
    return [cwd] if executable_dir == cwd else [cwd, executable_dir]


def find_env_file(explicit: Path | None, cwd: Path, executable_dir: Path) -> Path | None:
    """``--env-file`` if given, else ``.env`` in the current folder, else next to the executable.

    Task Scheduler starts programs in System32, so the last place matters. In each folder,
    ``env.txt`` (the earlier tool's name) is read when there is no ``.env``.
    """
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"--env-file: {explicit} does not exist or is not a file")
        return explicit
    for folder in env_file_folders(cwd, executable_dir):
        for name in ENV_FILE_NAMES:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def no_env_file_found(cwd: Path, executable_dir: Path) -> str:
    """The line that says where ``.env`` was looked for, shown before the settings it would have had."""
    folders = ", ".join(str(folder) for folder in env_file_folders(cwd, executable_dir))
    return (
        f"no .env found; looked in: {folders} (for .env, then env.txt). Put .env next to the program, "
        "or give its path with --env-file"
    )


def executable_dir() -> Path:
    """The folder of the frozen exe, or of the current script when run from source."""
    if getattr(sys, "frozen", False):
        return Path(sys.executable).resolve().parent
    return Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] else Path.cwd()


def read_env_file(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    from dotenv import dotenv_values  # start-up: only when there is a .env file

    try:
        values = dotenv_values(path, interpolate=False)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--env-file: cannot read {path}: {exc.__class__.__name__}") from None
    return {key: value for key, value in values.items() if value is not None}


_ENV_LINE_NAME = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=")


def env_file_problems(path: Path | None) -> list[str]:
    """One line per ``.env`` line that python-dotenv cannot read (it would drop it with a warning).

    Names the variable and the line, never the value: the line may hold a secret.
    """
    if path is None:
        return []
    from dotenv.parser import parse_stream  # start-up: only when there is a .env file

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []  # read_env_file reports it
    problems = []
    for binding in parse_stream(io.StringIO(text)):
        if not binding.error:
            continue
        named = _ENV_LINE_NAME.match(binding.original.string)
        name = named.group(1) if named else "a setting"
        problems.append(
            f"{name}: line {binding.original.line} of {path} cannot be read, so it would be ignored. "
            "Check its quotes: a value that starts with a quote must end with the same quote on that line"
        )
    return problems
