"""What a command is given by the outside world, and the settings it loads from there.

:class:`Context` lives here, in the settings room, because every command takes one: those in
``cli`` and those in the rooms below it (``job.runner``'s run and validate, ``rehearsal.demo``),
so it must stand below them all. What it holds is what the tool is told and where from (the
environment, the folder it started in, the ``.env`` found, the settings loaded), with the
console to answer on and the stop request its signal handlers note; none of it is about DfE,
the database or a run, so nothing here needs a higher room.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from api_pipeline.errors import ConfigError
from api_pipeline.settings.config import Settings, load_settings
from api_pipeline.settings.envfile import executable_dir, find_env_file, no_env_file_found
from api_pipeline.settings.masking import hide_secrets, known_secrets, mask_secrets, remember_secret
from api_pipeline.stopping import StopRequest
from api_pipeline.wording import printable


@dataclass
class Context:
    """What a command handler needs from the outside world; tests build their own."""

    environ: Mapping[str, str]
    cwd: Path
    out: TextIO
    err: TextIO
    executable_dir: Path = field(default_factory=executable_dir)
    frozen: bool = field(default_factory=lambda: bool(getattr(sys, "frozen", False)))
    # What the command loaded, for messages about it: the .env read, and the settings.
    env_file: Path | None = None
    loaded: Settings | None = None
    implied_run: bool = False  # started with no command, so running 'run'
    # Ctrl+C or the system asking the command to stop: main installs the signal handlers that note it.
    stop: StopRequest = field(default_factory=StopRequest)
    warned: set[str] = field(default_factory=set)  # the warnings said already, each said once

    def path(self, path: Path) -> Path:
        """A path given on the command line, relative to the folder the command was started in."""
        return path if path.is_absolute() else self.cwd / path

    def user_folder(self) -> Path:
        """The user's own folder (%USERPROFILE% on Windows, else $HOME), whatever folder the command started in."""
        names = ("USERPROFILE", "HOME") if sys.platform == "win32" else ("HOME",)
        for name in names:
            if self.environ.get(name, "").strip():
                return Path(self.environ[name].strip())
        return Path.home()

    def settings(self, args: argparse.Namespace, command: str, **overrides: Any) -> Settings:
        explicit = None if args.env_file is None else self.path(args.env_file)
        if args.log_dir is not None:
            overrides["log_dir"] = self.path(args.log_dir)
        if args.verbose:
            overrides["debug"] = True
        return self.load(command, explicit, overrides)

    def load(
        self, command: str, explicit: Path | None, overrides: dict[str, Any], *, connection_given: bool = False
    ) -> Settings:
        """The settings for ``command``, as the command line loads them: from ``explicit`` (the
        ``.env`` file named), else the one found, with the environment and ``overrides`` above it;
        the Python API loads them here too. ``connection_given``: see ``config.load_settings``."""
        self.env_file = find_env_file(explicit, self.cwd, self.executable_dir)
        try:
            settings = load_settings(
                command=command,
                environ=self.environ,
                env_file=self.env_file,
                overrides=overrides,
                cwd=self.cwd,
                connection_given=connection_given,
            )
        except ConfigError as exc:
            if self.env_file is None and explicit is None:
                raise ConfigError([no_env_file_found(self.cwd, self.executable_dir), *exc.problems]) from None
            raise
        if command != "run":  # a run writes them in its log, on the console and in the log file
            for warning in settings.warnings:
                self.warn(warning)
        self.loaded = settings
        remember_secret(*settings.secrets())  # hidden in the error line and traceback main prints, and in logs
        return settings

    def error_log_folders(self) -> list[Path]:
        """Where a failed start leaves its trace: the default log folder, else beside the exe, else here."""
        folders = []
        if self.env_file is not None:
            folders.append(self.env_file.parent / "logs")
        if self.frozen:
            folders.append(self.executable_dir / "logs")
        folders.append(self.cwd / "logs")
        return list(dict.fromkeys(folders))

    def masked(self, text: str, *, patterns: bool = False) -> str:
        """``text`` with every secret known to this process hidden: the settings', and any learnt
        since, such as a token (:data:`~api_pipeline.settings.masking.LIVE_SECRETS`).

        ``patterns`` also hides what looks like a password or a bearer token (for a traceback,
        whose text the tool did not write).
        """
        secrets = known_secrets()
        return mask_secrets(text, secrets) if patterns else hide_secrets(text, secrets)

    def warn(self, text: str) -> None:
        """A warning on stderr: one line, secrets hidden, before the command's own output; said once
        (run-smoke loads the settings for each of its three checks)."""
        if text in self.warned:
            return
        self.warned.add(text)
        print(f"warning: {printable(self.masked(text))}", file=self.err, flush=True)

    def print(self, text: str = "") -> None:
        """Print a command's output: its lines as they are, any other control character escaped."""
        print("\n".join(printable(line) for line in text.split("\n")), file=self.out, flush=True)
