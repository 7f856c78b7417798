"""The tool's name and version: the one place the version lives (release.sh rewrites it, the
PyInstaller spec and the exe's smoke test read it). At the ground, so every room may name it."""

__version__ = "0.1.0.dev0"

APP_NAME = "csc-api-pipeline"
