"""CSC API Pipeline: send children's social care records to the DfE CSC API."""

__version__ = "0.1.0.dev0"

APP_NAME = "csc-api-pipeline"
