"""gradsurg plugin: a multi-exit MLP on scikit-learn's digits.

`DIGITS_PROJECT` is the packaged recipe; the `gradsurg.recipes` entry point names it, so
`gradsurg run digits_project` works wherever the package is installed.
"""

from importlib.resources import files

DIGITS_PROJECT = files(__name__) / "recipes" / "digits_project.yaml"
