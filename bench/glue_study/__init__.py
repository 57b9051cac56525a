"""The first study's parts (issue 15), behind `bench/study.py`'s command line: `plan` (the
configurations, phases and runs), `launch` (the launcher: the real CLI, resumable, `--jobs` at
a time), `analysis` (finished runs' numbers: seed spread, held-out scores, the recommendation
rule) and `report` (docs/study.md)."""
