"""`python -m gradsurg` (what `torchrun ... -m gradsurg run RECIPE` launches)."""

from gradsurg.cli import app

if __name__ == "__main__":
    app()
