"""The ``.env`` file: where it is looked for, reading it, and the lines it cannot read (DESIGN §3).

``--env-file`` if given, else ``.env`` in the current folder, else next to the program (Task
Scheduler starts programs in System32); in each folder the earlier tool's ``env.txt`` when there
is no ``.env``. :func:`api_pipeline.settings.config.load_settings` reads what is found.
"""

from __future__ import annotations

import codecs
import io
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class EnvEntry:
    """One ``NAME=value`` line of the file, as python-dotenv reads it and as it is written."""

    name: str
    value: str  # as python-dotenv (and so the earlier tool) reads it: escapes inside quotes decoded
    written: str  # exactly as written between its quotes, no escape decoded; the same as value when unquoted
    quote: str  # the quote around the value: '"', "'", or "" for none
    line: int

    @property
    def path_text(self) -> str:
        """The value for a setting that names a file or folder: its backslashes as written.

        ``"C:\\Logs\\new"`` in double quotes is a folder, not ``C:\\Logs`` + newline + ``ew``. Only
        when every backslash is doubled (``"C:\\\\Logs"``, written by someone used to escaping) is
        each pair read as one, as python-dotenv reads it.
        """
        runs = _BACKSLASH_RUNS.findall(self.written)
        if runs and all(len(run) % 2 == 0 for run in runs):
            return self.value
        return self.written

    def control_escapes(self) -> list[str]:
        """The escapes (``\\n``, ``\\t``, ...) that python-dotenv turned into control characters here."""
        if self.quote != '"':
            return []
        return [escape for escape in _ESCAPE.findall(self.written) if escape[1] in _CONTROL_ESCAPES]


@dataclass(frozen=True)
class EnvFile:
    """What a ``.env`` file sets (the last line wins for a name set twice), and the lines it cannot read."""

    path: Path | None = None
    entries: Mapping[str, EnvEntry] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def values(self) -> dict[str, str]:
        return {name: entry.value for name, entry in self.entries.items()}


_BACKSLASH_RUNS = re.compile(r"\\+")
_ESCAPE = re.compile(r"\\.", re.DOTALL)
# What python-dotenv decodes inside each quote (codecs' unicode-escape of the two characters).
_DECODED = {
    '"': {
        "\\\\": "\\",
        "\\'": "'",
        '\\"': '"',
        "\\a": "\a",
        "\\b": "\b",
        "\\f": "\f",
        "\\n": "\n",
        "\\r": "\r",
        "\\t": "\t",
        "\\v": "\v",
    },
    "'": {"\\\\": "\\", "\\'": "'"},
}
_CONTROL_ESCAPES = frozenset("abfnrtv")
_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?(?:'[^']+'|[^=#\s]+)[^\S\r\n]*=[^\S\r\n]*")
_QUOTED = {
    '"': re.compile(r'"((?:\\.|[^"\\])*)"', re.DOTALL),
    "'": re.compile(r"'((?:\\.|[^'\\])*)'", re.DOTALL),
}
_ENV_LINE_NAME = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=")
# A double-quoted value ending in a backslash: the backslash makes the closing quote part of the value.
_BACKSLASH_BEFORE_QUOTE = re.compile(r"""=\s*"[^"\r\n]*\\"\s*(?:#[^\r\n]*)?(?:\r\n|\n|\r|$)""")


def read_env_file(path: Path | None) -> EnvFile:
    """Read the ``.env`` file as python-dotenv reads it, keeping each value as written too.

    Any encoding Windows' own tools write that can be recognised for certain is read: UTF-8
    with or without a byte-order mark (Notepad, PowerShell 7), UTF-16 with one (Windows
    PowerShell 5.1's ``>`` and ``Out-File``). Anything else stops with the line that could not
    be read. A line python-dotenv cannot read (it would drop it with a warning) is a problem
    naming the variable and the line, never the value: the line may hold a secret.
    """
    if path is None:
        return EnvFile()
    from dotenv.parser import parse_stream  # start-up: only when there is a .env file

    entries: dict[str, EnvEntry] = {}
    problems: list[str] = []
    for binding in parse_stream(io.StringIO(_env_text(path))):
        text = binding.original.string
        # The binding starts at the blank lines before it: its own line is after them.
        line = binding.original.line + len(_NEWLINE.findall(text[: len(text) - len(text.lstrip())]))
        if binding.error:
            problems.append(_unreadable_line(text, line, path))
        elif binding.key is not None and binding.value is not None:
            quote, written = _as_written(text, binding.value)
            entries[binding.key] = EnvEntry(binding.key, binding.value, written, quote, line)
    return EnvFile(path, entries, tuple(problems))


_NEWLINE = re.compile(r"\r\n|\n|\r")


def _env_text(path: Path) -> str:
    """The file's text; a :class:`ConfigError` naming the file (and the line) when it cannot be read.

    Never names ``--env-file``: the file may have been found without it.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the settings file {path}: {exc.strerror or exc.__class__.__name__}") from None
    save_as = "save it as UTF-8 (in Notepad: File, Save as, Encoding: UTF-8)"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise ConfigError(
                f"the settings file {path} starts as UTF-16 text but is not UTF-16 all through: {save_as}"
            ) from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise ConfigError(
            f"the settings file {path} cannot be read: line {line} has NUL characters, as a file saved as UTF-16 "
            f"without a byte-order mark has: {save_as}"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"the settings file {path} cannot be read: line {line} is not UTF-8 text (a letter such as ü or £ saved "
            f"as ANSI, Notepad's default on older Windows): {save_as}"
        ) from None


def _as_written(original: str, value: str) -> tuple[str, str]:
    """The quote around the value in ``original``, and the value exactly as written between them."""
    assignment = _ASSIGNMENT.match(original)
    quote = original[assignment.end() : assignment.end() + 1] if assignment else ""
    quoted = _QUOTED[quote].match(original, assignment.end()) if assignment and quote in _QUOTED else None
    if quoted is None:
        return "", value
    written = quoted.group(1)
    decoded = _ESCAPE.sub(lambda m: _DECODED[quote].get(m.group(0), m.group(0)), written)
    # Read otherwise by another version of python-dotenv: its reading stands, as for the earlier tool.
    return (quote, written) if decoded == value else (quote, value)


def _unreadable_line(text: str, line: int, path: Path) -> str:
    named = _ENV_LINE_NAME.match(text)
    name = named.group(1) if named else "a setting"
    first_line = text.lstrip().splitlines()[0] if text.strip() else ""
    if _BACKSLASH_BEFORE_QUOTE.search(first_line + "\n"):
        why = (
            'A backslash just before the closing quote (\\") makes the quote part of the value: end a folder '
            "without the backslash (C:\\Logs, not C:\\Logs\\)"
        )
    else:
        why = "Check its quotes: a value that starts with a quote must end with the same quote on that line"
    return f"{name}: line {line} of {path} cannot be read, so it would be ignored. {why}"
