"""MkDocs hooks (``hooks:`` in mkdocs.yml): generated pages, the version, a local Mermaid.

- ``<!-- generate: NAME -->`` in a page becomes the Markdown ``docgen.GENERATORS[NAME]``
  builds from the code; ``<!-- value: module.NAME -->`` becomes that constant's value;
  ``<!-- default: SETTING -->`` a setting's default; ``<!-- include: FILE -->`` inserts a
  repository file (the changelog).
- The build fails if a command, option or setting has no help text, or if the exit-code
  page misses a code the tool can return.
- The combined print page (the PDF's source) gets the same site base as every other page.
- Mermaid and the file:// search shim are served from the site itself, so nothing is
  loaded from the internet; see ``vendor_js.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).resolve().parent))

import docgen  # noqa: E402
import vendor_js  # noqa: E402

_vendored: dict[str, Path] = {}


def on_config(config: Any) -> Any:
    from api_pipeline import __version__

    problems = docgen.help_problems()
    if problems:
        raise PluginError("help text is missing in api_pipeline:\n  " + "\n  ".join(problems))
    config.extra["version"] = __version__
    config["copyright"] = f"CSC API Pipeline {__version__} · MIT licence"
    try:
        _vendored.update(vendor_js.ensure())
    except vendor_js.VendorUnavailable as exc:
        raise PluginError(str(exc)) from None
    # Scripts the theme would otherwise fetch from a CDN must be listed as local files.
    local = {str(script) for script in config["extra_javascript"]} | set(config.extra.get("polyfills", []))
    for site_path in _vendored:
        if site_path.endswith(".js") and site_path not in local:
            raise PluginError(f"mkdocs.yml must list {site_path} (extra_javascript or extra.polyfills)")
    return config


def on_files(files: Files, config: Any) -> Files:
    for site_path, cached in _vendored.items():
        files.append(File.generated(config, site_path, abs_src_path=str(cached)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    try:
        expanded = docgen.expand(markdown)
    except (KeyError, AssertionError, OSError, ValueError) as exc:
        raise PluginError(f"{page.file.src_uri}: {exc}") from None
    if page.file.src_uri == "exit-codes.md":
        _check_exit_codes(expanded)
    return expanded


def _check_exit_codes(markdown: str) -> None:
    listed = {int(m.group(1)) for m in re.finditer(r"^\|\s*(\d+)\s*\|", markdown, re.M)}
    missing = sorted(set(docgen.exit_code_values().values()) - listed)
    if missing:
        raise PluginError(f"exit-codes.md has no row for exit code(s) {missing}: add what to do about each")


@event_priority(-200)  # after print-site has written the print page
def on_post_build(config: Any) -> None:
    """The print page is rendered with the 404 page's context, whose base is the server root.

    That breaks search (and its script) when the site is opened from a folder; the print page
    sits at the top of the site, like the home page, so its base is ``.``.
    """
    page = Path(config["site_dir"]) / "print_page.html"
    if not page.is_file():
        return
    html = page.read_text(encoding="utf-8")
    fixed = html.replace('"base": "/"', '"base": "."', 1)
    if fixed != html:
        page.write_text(fixed, encoding="utf-8")
