"""Write release.zip: what a council downloads to install the tool on a Windows server.

    python packaging/make_release_zip.py --version X.Y.Z --out dist/release.zip [--exe PATH] [--pdf PATH]

The zip holds one folder, ``csc-api-pipeline-X.Y.Z/``, with the exe (when built), the settings
template ``.env.example``, README, LICENSE, CHANGELOG, the documentation PDF (when built) and
``SHA256SUMS`` for all of them (``sha256sum -c SHA256SUMS`` on Linux; ``certutil -hashfile FILE
SHA256`` on Windows). Used by release.sh and by the release workflow, so both ship the same layout.
Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALWAYS = (".env.example", "README.md", "LICENSE", "CHANGELOG.md")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_zip(version: str, out: Path, exe: Path | None, pdf: Path | None) -> list[str]:
    folder = f"csc-api-pipeline-{version}"
    files: dict[str, bytes] = {}
    if exe is not None:
        files["csc_api_pipeline.exe"] = exe.read_bytes()
    for name in ALWAYS:
        files[name] = (REPO / name).read_bytes()
    if pdf is not None:
        files[pdf.name] = pdf.read_bytes()
    sums = "".join(f"{sha256(data)}  {name}\n" for name, data in sorted(files.items()))
    files["SHA256SUMS"] = sums.encode("ascii")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(f"{folder}/{name}", data)
    return [f"{folder}/{name}" for name in files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", required=True, help="The release's version, X.Y.Z.")
    parser.add_argument("--out", type=Path, required=True, help="The zip to write.")
    parser.add_argument("--exe", type=Path, help="csc_api_pipeline.exe, when it was built.")
    parser.add_argument("--pdf", type=Path, help="The documentation PDF, when it was built.")
    args = parser.parse_args(argv)
    for path in (args.exe, args.pdf):
        if path is not None and not path.is_file():
            parser.error(f"no such file: {path}")
    names = build_zip(args.version, args.out, args.exe, args.pdf)
    print(f"{args.out}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
