"""A run folder's layout and resume: what `gradsurg run` writes, what `--resume` and
`gradsurg compare` read back.

A run folder holds

- `recipe.yaml` (`RECIPE_FILE`): the resolved recipe, written before training starts;
- `results.json` (`RESULTS_FILE`): the results, written last, so its presence means finished;
- `exit_logits.safetensors` (`EXIT_LOGITS_FILE`, multi-exit programs): every exit's evaluation
  outputs `logits` `[L, N, C]` and `labels` `[N]`, for `gradsurg compare` and later sweeps;
- `checkpoints/` (`CHECKPOINTS_DIR`): `step-*` folders (see `gradsurg.checkpoint`);
- `.gradsurg.lock` (`LOCK_FILE`) while a run holds the folder (`gradsurg.outputs.OutputLock`).

This module sits low (it imports no program, no CLI and no YAML loader): the CLI's folder
checks, a program's resume and the report read the folder through it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gradsurg import strict_json, strict_yaml
from gradsurg.errors import ConfigError, quoted
from gradsurg.outputs import LOCK_FILE, atomic_write_bytes, atomic_write_text

__all__ = [
    "CHECKPOINTS_DIR",
    "EXIT_LOGITS_FILE",
    "LOCK_FILE",
    "RECIPE_FILE",
    "RESULTS_FILE",
    "RESULT_KEYS",
    "LoadedRun",
    "check_run_folder",
    "first_changed_key",
    "load_run",
    "plain_defaults",
    "read_exit_logits",
    "read_saved_recipe",
    "refuse_changed_recipe",
    "value_at",
    "write_exit_logits",
    "write_recipe",
    "write_results",
]

RECIPE_FILE = "recipe.yaml"
RESULTS_FILE = "results.json"
EXIT_LOGITS_FILE = "exit_logits.safetensors"
CHECKPOINTS_DIR = "checkpoints"
#: Keys every multi-exit results.json holds (what `load_run` needs to compare runs).
RESULT_KEYS = ("task", "mode", "primary_metric", "exit_metrics")


# ---- writing ------------------------------------------------------------------------------

def write_recipe(folder: Path, resolved: Mapping[str, Any]) -> Path:
    """The resolved recipe, as `--resume` reads it back; atomic."""
    path = folder / RECIPE_FILE
    atomic_write_text(path, yaml.safe_dump(dict(resolved), sort_keys=False), own=True)
    return path


def write_results(folder: Path, results: Mapping[str, Any]) -> Path:
    """results.json (strict JSON: NaN / inf refused); atomic, so a finished run is whole."""
    path = folder / RESULTS_FILE
    atomic_write_text(path, strict_json.dumps(results, indent=2) + "\n", own=True)
    return path


def write_exit_logits(folder: Path, logits: Any, labels: Any) -> Path:
    """Every exit's evaluation outputs `[L, N, C]` and the labels `[N]`; atomic."""
    from safetensors.torch import save

    path = folder / EXIT_LOGITS_FILE
    atomic_write_bytes(path, save({"logits": logits.contiguous(), "labels": labels.contiguous()}))
    return path


# ---- resume -------------------------------------------------------------------------------

def check_run_folder(folder: Path, resolved: Mapping[str, Any], *, resume: bool,
                     evaluation_keys: frozenset[str] = frozenset(),
                     defaults: Mapping[str, Any] | None = None) -> None:
    """Refuse to overwrite a run that could be resumed or has finished, or to resume it with
    another recipe (keys in `evaluation_keys` may change: the run is evaluated again; a key
    the saved recipe lacks counts as its value in `defaults`, see `first_changed_key`)."""
    has_checkpoints = any((folder / CHECKPOINTS_DIR).glob("step-*"))
    results = folder / RESULTS_FILE
    finished = results.is_file()
    if not resume and has_checkpoints:
        raise ConfigError(
            f"{folder} holds checkpoints of an earlier run; pass --resume to continue it, or "
            "choose another --output")
    if not resume and finished:
        raise ConfigError(
            f"{folder} holds a finished run ({results}); choose another "
            "--output (nothing is overwritten)")
    if resume and finished and not has_checkpoints:
        raise ConfigError(
            f"{folder} holds a finished run without checkpoints (checkpoints: false), so "
            "--resume has nothing to continue or evaluate again; choose another --output")
    saved = read_saved_recipe(folder) if resume else None
    if saved is not None:
        refuse_changed_recipe(saved, resolved, ignore=evaluation_keys, defaults=defaults,
                              saved_in=str(folder / RECIPE_FILE),
                              advice="resume with the original recipe and --set overrides")


def read_saved_recipe(folder: Path) -> dict[str, Any] | None:
    """The resolved recipe a run folder was started with; None when it has none."""
    path = folder / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        saved = strict_yaml.load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read back ({str(error)[:200]})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: not a recipe (a mapping of keys)")
    return saved


def first_changed_key(saved: Mapping[str, Any], current: Mapping[str, Any], *,
                      ignore: frozenset[str] = frozenset(),
                      defaults: Mapping[str, Any] | None = None) -> str | None:
    """The alphabetically first key whose value differs between two resolved recipes, as a
    dotted path into nested keys (`optimizer.lr`, not the whole `optimizer` mapping); keys in
    `ignore`, e.g. evaluation-only settings, may differ. A top-level key missing from `saved`
    counts as its value in `defaults` (`plain_defaults`): a run started before the key existed
    ran with its default, so adding a key does not strand every run folder in progress."""
    defaults = defaults or {}
    changed = sorted(k for k in saved.keys() | current.keys()
                     if k not in ignore and saved.get(k, defaults.get(k)) != current.get(k))
    if not changed:
        return None
    key = changed[0]
    inner_saved, inner_current = saved.get(key, defaults.get(key)), current.get(key)
    if isinstance(inner_saved, Mapping) and isinstance(inner_current, Mapping):
        return f"{key}.{first_changed_key(inner_saved, inner_current)}"
    return key


def refuse_changed_recipe(saved: Mapping[str, Any], current: Mapping[str, Any], *,
                          ignore: frozenset[str], saved_in: str, advice: str,
                          defaults: Mapping[str, Any] | None = None) -> None:
    """`--resume` continues the recipe a run was started with: the first key that differs
    (outside `ignore`; missing keys as in `first_changed_key`) is one ConfigError naming both
    values and where the saved one is."""
    key = first_changed_key(saved, current, ignore=ignore, defaults=defaults)
    if key is None:
        return
    top = key.split(".")[0]
    if top not in saved:  # a run from before the key existed
        was = (f"not set (its default, {quoted(defaults[top])})"
               if defaults and top in defaults else "not set")
    else:
        was = quoted(value_at(saved, key))
    raise ConfigError(f"--resume: key {key!r} is {quoted(value_at(current, key))} here "
                      f"but {was} in {saved_in}; {advice}")


def plain_defaults(schema: Any) -> dict[str, Any]:
    """A recipe schema's (pydantic model class) keys with a plain default value, by name: what
    a run started before such a key existed ran with. Keys that are required or built by a
    factory (e.g. `optimizer`) are left out, so their absence still counts as a change."""
    return {name: field.default for name, field in schema.model_fields.items()
            if not field.is_required() and field.default_factory is None}


def value_at(recipe: Mapping[str, Any], dotted: str) -> Any:
    """The value a dotted key (`optimizer.lr`) names in a resolved recipe; None if absent."""
    value: Any = recipe
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


# ---- reading a finished run back ----------------------------------------------------------

@dataclass
class LoadedRun:
    """One finished run: its results.json and, when written, every exit's dev outputs."""

    results: dict[str, Any]
    folder: Path | None = None
    logits: Any = None  # torch.Tensor [L, N, C] or None
    labels: Any = None  # torch.Tensor [N] or None

    @property
    def name(self) -> str:
        return str(self.folder) if self.folder is not None else str(self.results.get("mode"))


def load_run(folder: str | os.PathLike[str]) -> LoadedRun:
    """Read a run folder; a missing or corrupt results.json or logits file is a ConfigError
    naming the file."""
    folder = Path(folder)
    path = folder / RESULTS_FILE
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such run folder")
    if not path.is_file():
        raise ConfigError(f"{path}: missing; is {folder} a finished run?")
    results = strict_json.load_file(path)  # bounded; NaN / Infinity refused, file named
    if not isinstance(results, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(results).__name__}")
    missing = [key for key in RESULT_KEYS if key not in results]
    if missing:
        raise ConfigError(f"{path}: missing key {missing[0]!r}; not a multiexit_glue result")
    metric = results["primary_metric"]
    exits = results["exit_metrics"]
    if (not isinstance(exits, list) or not exits
            or not all(isinstance(m, dict) and isinstance(m.get(metric), int | float)
                       for m in exits)):
        raise ConfigError(f"{path}: 'exit_metrics' must list each exit's {metric!r}")
    run = LoadedRun(results=results, folder=folder)
    if (folder / EXIT_LOGITS_FILE).is_file():
        run.logits, run.labels = read_exit_logits(folder / EXIT_LOGITS_FILE, len(exits))
    return run


def read_exit_logits(path: Path, num_exits: int) -> tuple[Any, Any]:
    """`logits` `[L, N, C]` (as float32) and `labels` `[N]` from an exit-logits file, checked:
    shapes that fit `num_exits`, every value finite; else a ConfigError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ConfigError(f"{path}: cannot be read ({error})") from None
    logits, labels = tensors.get("logits"), tensors.get("labels")
    if logits is None or labels is None:
        raise ConfigError(f"{path}: needs tensors 'logits' and 'labels', has {sorted(tensors)}")
    if logits.ndim != 3 or labels.ndim != 1 or logits.shape[1] != labels.shape[0]:
        raise ConfigError(f"{path}: expected logits [L, N, C] and labels [N], got "
                          f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if logits.shape[0] != num_exits:
        raise ConfigError(f"{path}: {logits.shape[0]} exits, but results.json lists {num_exits}")
    for name, tensor in (("logits", logits), ("labels", labels)):
        # checked as the run checks its own outputs: NaN / inf scores nothing
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            bad = int((~tensor.isfinite()).sum())
            raise ConfigError(f"{path}: {bad} of {tensor.numel()} {name} are NaN/inf, so no "
                              "metric would mean anything; not compared")
    return logits.float(), labels
