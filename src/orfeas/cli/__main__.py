"""`python -m orfeas.cli`, the same as `orfeas`."""

from orfeas.cli import app

app()
