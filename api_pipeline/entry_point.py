"""PyInstaller launcher: the frozen exe starts here."""

import sys

from api_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
