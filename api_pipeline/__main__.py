"""``python -m api_pipeline``."""

import sys

from api_pipeline.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
