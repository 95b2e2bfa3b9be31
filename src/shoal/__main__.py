"""``python -m shoal``: the same as the ``shoal`` command."""

from shoal.cli import app

app(prog_name="shoal")
