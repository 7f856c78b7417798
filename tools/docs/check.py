"""Check a built documentation site and its PDF, as a reader would see them.

    python tools/docs/check.py [--site-dir site] [--screenshot how-it-works.png]

Run after ``build.py``. Exits non-zero, listing every failure, if:

- the PDF is missing, has no cover page with the version, or its text lacks any command,
  option or setting of this version, or still contains Mermaid source instead of diagrams;
- a page's Mermaid diagrams did not all become SVG in headless Chromium (each diagram's
  type is read from the SVG Mermaid drew), or raw diagram source is left on the page;
- a page asked for anything from the internet, or had a script error;
- a link or asset reference inside the site points at a file or an anchor that is not there.

``--screenshot`` saves a PNG of the "How it works" page, to look at.
"""

from __future__ import annotations

import argparse
import html.parser
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import browser  # noqa: E402
import docgen  # noqa: E402


def _load_build_script():
    """tools/docs/build.py, by path: a plain ``import build`` could find PyPA's ``build`` package."""
    spec = importlib.util.spec_from_file_location("docs_build", HERE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_docs = _load_build_script()

# The first word of each kind of Mermaid source, as it would show if a diagram failed to draw.
MERMAID_SOURCE = re.compile(r"^\s*(flowchart|graph|sequenceDiagram|stateDiagram(-v2)?)\b", re.M)
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


class Failures(list[str]):
    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.append(message)
        return ok


# ---------------------------------------------------------------------------
# The PDF
# ---------------------------------------------------------------------------


def pdf_text(pdf: Path, first: int | None = None, last: int | None = None) -> str:
    command = ["pdftotext", "-layout"]
    if first:
        command += ["-f", str(first), "-l", str(last or first)]
    return subprocess.run([*command, str(pdf), "-"], capture_output=True, text=True, check=True).stdout  # noqa: S603


def pdf_pages(pdf: Path) -> int:
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout  # noqa: S603
    match = re.search(r"^Pages:\s+(\d+)", info, re.M)
    return int(match.group(1)) if match else 0


def check_pdf(pdf: Path, failures: Failures) -> None:
    from api_pipeline import __version__

    if not failures.check(pdf.is_file(), f"{pdf} was not built"):
        return
    if not failures.check(shutil.which("pdftotext") is not None, "pdftotext is missing (Debian: poppler-utils)"):
        return
    pages = pdf_pages(pdf)
    failures.check(pages > 10, f"the PDF has only {pages} pages")
    cover = " ".join(pdf_text(pdf, 1).split())
    failures.check("CSC API Pipeline" in cover, "the PDF's first page is not the cover (no title)")
    failures.check(f"Version {__version__}" in cover, f"the PDF's cover does not show version {__version__}")
    text = pdf_text(pdf)
    flat = " ".join(text.split())
    for command in docgen.commands():
        for name in (command.name, *command.aliases):
            failures.check(
                re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flat) is not None,
                f"the PDF never mentions the command {name}",
            )
    for option in docgen.option_strings():
        failures.check(option in flat, f"the PDF never mentions the option {option}")
    for setting in docgen.setting_names():
        failures.check(setting in flat, f"the PDF never mentions the setting {setting}")
    leftover = MERMAID_SOURCE.findall(text)
    failures.check(not leftover, f"the PDF contains Mermaid source instead of a diagram ({len(leftover)} places)")
    print(f"pdf: {pages} pages, {len(flat.split())} words, every command, option and setting present")


# ---------------------------------------------------------------------------
# Pages in the browser
# ---------------------------------------------------------------------------


def diagram_sources(markdown_file: Path) -> int:
    return len(re.findall(r"^```mermaid\s*$", markdown_file.read_text(encoding="utf-8"), re.M))


def drawn_diagrams(page: browser.Page) -> list[str]:
    """The type of each diagram that became SVG (from ``aria-roledescription``)."""
    found: list[str] = []

    def visit(node: dict) -> None:
        if node.get("nodeName") != "DIV" or "mermaid" not in browser.attributes(node).get("class", "").split():
            return
        kinds: list[str] = []

        def svg(inner: dict) -> None:
            if inner.get("nodeName", "").lower() == "svg" and "aria-roledescription" in browser.attributes(inner):
                kinds.append(browser.attributes(inner)["aria-roledescription"])

        browser.walk(node, svg)
        found.append(kinds[0] if kinds else "")

    browser.walk(page.document(), visit)
    return found


def check_pages(site: Path, failures: Failures, screenshot: Path | None) -> None:
    sources = {path.with_suffix(".html").name: path for path in sorted(docgen.DOCS.glob("*.md"))}
    with browser.Browser() as chromium:
        page = chromium.new_page(width=1280, height=900)
        for name, markdown_file in sources.items():
            expected = diagram_sources(markdown_file)
            mark = len(page.requested_urls()), len(page.errors())
            page.navigate(browser.page_url(site / name))
            try:
                page.wait_for(build_docs.DIAGRAMS_DRAWN, timeout=60, what=f"the diagrams on {name}")
            except browser.BrowserError as exc:
                failures.append(str(exc))
            kinds = drawn_diagrams(page)
            if expected or kinds:
                failures.check(
                    len(kinds) == expected and all(kinds) and "error" not in kinds,
                    f"{name}: {expected} diagrams in the source, drawn as SVG: {kinds}",
                )
                print(f"{name}: {len(kinds)} diagrams drawn as SVG ({', '.join(kinds)})")
            visible = page.evaluate("document.body.innerText")
            failures.check(not MERMAID_SOURCE.search(visible), f"{name}: raw Mermaid source is visible")
            external = [u for u in page.requested_urls()[mark[0] :] if not u.startswith(LOCAL_SCHEMES)]
            failures.check(not external, f"{name}: asked the internet for {external}")
            errors = page.errors()[mark[1] :]
            failures.check(not errors, f"{name}: script errors {errors}")
            if name == "how-it-works.html":
                failures.check(expected >= 3, "how-it-works.md should have its three diagrams")
                if screenshot is not None:
                    height = page.evaluate("document.documentElement.scrollHeight")
                    screenshot.write_bytes(page.screenshot({"x": 0, "y": 0, "width": 1280, "height": height}))
                    print(f"screenshot: {screenshot}")


# ---------------------------------------------------------------------------
# Links inside the site
# ---------------------------------------------------------------------------


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("id", "name"):
            if values.get(key):
                self.ids.add(str(values[key]))
        for key in ("href", "src"):
            if values.get(key):
                self.refs.append(str(values[key]))


def check_links(site: Path, failures: Failures) -> None:
    parsed: dict[Path, _Links] = {}
    for page in sorted(site.rglob("*.html")):
        links = _Links()
        links.feed(page.read_text(encoding="utf-8"))
        parsed[page] = links
    checked = 0
    for page, links in parsed.items():
        for ref in links.refs:
            parts = urlsplit(ref)
            if parts.scheme or ref.startswith("//") or page.name == "404.html":
                continue  # external links, and the 404 page, which is served from anywhere
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            checked += 1
            if not failures.check(target.is_file(), f"{page.relative_to(site)}: broken link {ref}"):
                continue
            if parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else set()
                failures.check(parts.fragment in ids, f"{page.relative_to(site)}: no anchor for {ref}")
    print(f"links: {checked} internal links and asset references resolved")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site-dir", type=Path, default=REPO / "site", help="The built site (default: ./site).")
    parser.add_argument("--screenshot", type=Path, help="Save a PNG of the How it works page here.")
    args = parser.parse_args(argv)
    site = args.site_dir.resolve()
    failures = Failures()
    check_pdf(site / build_docs.PDF_NAME, failures)
    check_pages(site, failures, args.screenshot)
    check_links(site, failures)
    if failures:
        print(f"\n{len(failures)} problem(s):", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print("docs checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
