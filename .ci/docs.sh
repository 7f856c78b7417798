#!/usr/bin/env bash
# Documentation: build the site strictly and the PDF, then check both as a reader sees them.
# Called by .ci/run after the tests, inside its venv (the project is installed with .[test]).
# On a fresh Debian 12 machine it installs what is missing: the docs extra from PyPI,
# Chromium and poppler-utils from Debian, and (once, into a cache) Mermaid from npm.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v pdftotext >/dev/null 2>&1 || need_apt+=(poppler-utils)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
# Chromium draws text with whatever fonts exist; a bare machine may have none.
fc-list 2>/dev/null | grep -qi 'dejavu\|liberation' || need_apt+=(fonts-dejavu-core fonts-liberation)
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "docs: installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

python -m pip install --quiet ".[docs]"

# The site (mkdocs build --strict) and site/csc-api-pipeline-docs.pdf.
python tools/docs/build.py --site-dir site

# The PDF's text, the diagrams in a real browser, no request to the internet, internal links.
python tools/docs/check.py --site-dir site --screenshot site/how-it-works.png

echo "docs: done in $(( $(date +%s) - started )) s"
