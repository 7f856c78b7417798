"""Build the documentation: the site (strictly) and one PDF of every page.

    python tools/docs/build.py [--site-dir site] [--no-pdf]

1. ``mkdocs build --strict``: fails on any warning, including a broken internal link or
   anchor, a page missing from the navigation, or a command, option or setting without help
   text (see ``hooks.py``).
2. The PDF: the print-site plugin has combined every page, after a cover page with the
   version, into ``print_page.html``. Headless Chromium opens it, waits until Mermaid has
   drawn every diagram, and prints it to ``<site>/csc-api-pipeline-docs.pdf``.

Needs the ``docs`` extra (``pip install ".[docs]"``), npm once (for the vendored scripts,
see ``vendor_js.py``) and Chromium (Debian's ``chromium`` package) for the PDF.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import browser  # noqa: E402

PDF_NAME = "csc-api-pipeline-docs.pdf"
PRINT_PAGE = "print_page.html"
# Until every diagram has been drawn Material leaves it as <pre class="mermaid">.
DIAGRAMS_DRAWN = "document.querySelectorAll('pre.mermaid').length === 0"


def build_site(site_dir: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)]
    subprocess.run(command, cwd=REPO, env=env, check=True)  # noqa: S603


def footer(version: str) -> str:
    return (
        '<div style="font-size:8px;width:100%;margin:0 12mm;color:#555;display:flex;'
        'justify-content:space-between;font-family:sans-serif">'
        f"<span>CSC API Pipeline {version}</span>"
        '<span>page <span class="pageNumber"></span> of <span class="totalPages"></span></span></div>'
    )


def build_pdf(site_dir: Path, out: Path, version: str) -> Path:
    """Print the combined page to an A4 PDF once its diagrams are drawn."""
    print_page = site_dir / PRINT_PAGE
    if not print_page.is_file():
        raise SystemExit(f"error: {print_page} is missing: is the print-site plugin in mkdocs.yml?")
    with browser.Browser() as chromium:
        page = chromium.new_page()
        page.navigate(browser.page_url(print_page))
        page.wait_for(DIAGRAMS_DRAWN, timeout=120, what="Mermaid to draw every diagram")
        page.evaluate("document.fonts.ready.then(() => true)")
        errors = page.errors()
        if errors:
            raise SystemExit("error: the print page had script errors:\n  " + "\n  ".join(errors))
        pdf = page.pdf(
            paperWidth=8.27,
            paperHeight=11.69,
            marginTop=0.55,
            marginBottom=0.65,
            marginLeft=0.55,
            marginRight=0.55,
            printBackground=True,
            displayHeaderFooter=True,
            headerTemplate="<div></div>",
            footerTemplate=footer(version),
            generateTaggedPDF=True,
            generateDocumentOutline=True,
        )
    out.write_bytes(pdf)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site-dir", type=Path, default=REPO / "site", help="Where to build (default: ./site).")
    parser.add_argument("--no-pdf", action="store_true", help="Build the site only.")
    args = parser.parse_args(argv)
    site_dir = args.site_dir.resolve()

    from api_pipeline import __version__

    started = time.monotonic()
    build_site(site_dir)
    print(f"site: {site_dir} ({time.monotonic() - started:.1f} s)")
    if not args.no_pdf:
        started = time.monotonic()
        pdf = build_pdf(site_dir, site_dir / PDF_NAME, __version__)
        print(f"pdf: {pdf} ({pdf.stat().st_size // 1024} KiB, {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
