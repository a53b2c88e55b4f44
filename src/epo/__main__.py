"""`python -m epo ...` runs the CLI, for environments where the `epo` script is not on PATH."""

from epo.cli import app

if __name__ == "__main__":
    app()
