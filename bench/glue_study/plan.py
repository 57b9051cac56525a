"""The study's configurations, phases and planned runs; which configuration gets three seeds."""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: bench/glue_study/plan.py

#: Configuration name -> (recipe under recipes/, --set overrides).
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "deebert": ("deebert_glue.yaml", []),
    "deebert_sd": ("deebert_sd_glue.yaml", []),
    "romebert_sd": ("romebert_sd_glue.yaml", []),
    "romebert": ("romebert_glue.yaml", []),
    # the authors' code on MNLI/QQP: SD projected off the final exit's gradient, which stays whole
    "romebert_reversed": ("romebert_glue.yaml",
                          ["combiner={name: project, target: sd, reference: final}"]),
    "exit_upgrad": ("romebert_glue.yaml", ["exit_groups=sd", "combiner=upgrad"]),
    "exit_pcgrad": ("romebert_glue.yaml", ["exit_groups=sd", "combiner=pcgrad"]),
    "exit_imtlg": ("romebert_glue.yaml", ["exit_groups=sd", "combiner=imtlg"]),
}
PAPER_MODES = ["deebert", "deebert_sd", "romebert_sd", "romebert"]
#: The best two configurations of the screening besides the paper modes: at 50% time on STS-B
#: (reversed 77.74, UPGrad 74.68 Pearson; PCGrad 72.66, IMTL-G 70.70) and at 40% time on SST-2
#: (UPGrad 82.22, reversed 82.11; PCGrad 82.00, IMTL-G 78.44) they are the top two of the rest.
SCREENED_INTO_PAPER = ["romebert_reversed", "exit_upgrad"]
PAPER_CONFIGS = [*PAPER_MODES, *SCREENED_INTO_PAPER]
#: Three seeds for these and for the paper phase's best other configuration (`best_paper_config`).
SEEDS = [42, 43, 44]
ALWAYS_SEEDED = ["deebert", "romebert"]
TWO_STAGE = ("deebert", "deebert_sd")

COMMON = ["pooling=mean", "save_model=false", "threads=1", "checkpoint_every=200"]
#: Phase -> task -> overrides. Screening: CPU-sized; paper: the RomeBERT paper's schedule.
#: SST-2's screening subset is 8,000 sentences, not the 20,000 first planned: at 20,000 the
#: eight screening runs alone cost about 4 CPU-hours on two cores (500 steps instead of 1,250).
PHASES: dict[str, dict[str, list[str]]] = {
    "screening": {
        "stsb": ["epochs=1", "batch_size=16", "optimizer.lr=5e-5"],
        "sst2": ["epochs=1", "batch_size=16", "optimizer.lr=5e-5", "train_rows=8000"],
    },
    "paper": {
        "mrpc": ["epochs=3", "batch_size=8", "optimizer.lr=2e-5", "max_length=128"],
        "rte": ["epochs=3", "batch_size=8", "optimizer.lr=2e-5", "max_length=128"],
    },
}


@dataclass(frozen=True)
class Run:
    phase: str
    task: str
    config: str
    seed: int

    def folder(self, runs: Path) -> Path:
        return runs / self.phase / self.task / self.config / f"seed-{self.seed}"

    def command(self, runs: Path) -> list[str]:
        sets = [f"task={self.task}", f"seed={self.seed}", *COMMON, *PHASES[self.phase][self.task]]
        return [*run_command(self.config, sets, self.folder(runs)), "--resume"]


def run_command(config: str, sets: list[str], output: Path,
                configs: dict[str, tuple[str, list[str]]] = CONFIGS) -> list[str]:
    """`python -m gradsurg run` of one configuration's recipe with `sets`, then the
    configuration's own overrides, into `output` (`configs`: where the name is looked up; the
    depth study adds its own without planning them into this study)."""
    recipe, overrides = configs[config]
    args = [sys.executable, "-m", "gradsurg", "run", str(ROOT / "recipes" / recipe)]
    for item in [*sets, *overrides]:
        args += ["--set", item]
    return [*args, "--output", str(output)]


def plan(phase: str, configs: list[str], seeds: list[int], tasks: list[str] | None) -> list[Run]:
    chosen = tasks or list(PHASES[phase])
    return [Run(phase, task, config, seed)
            for task in chosen for config in configs for seed in seeds]


def seeded_candidates() -> list[str]:
    return [config for config in PAPER_CONFIGS if config not in ALWAYS_SEEDED]


def best_paper_config(runs: Path) -> str | None:
    """The paper phase's best configuration besides deebert and romebert, which gets three
    seeds too: the highest mean normalized area under the metric-vs-time curve over the paper
    tasks at seed 42. None until every one of those runs is finished."""
    candidates = seeded_candidates()
    areas: dict[str, list[float]] = {config: [] for config in candidates}
    for run in plan("paper", candidates, SEEDS[:1], None):
        results = run.folder(runs) / "results.json"
        if not results.is_file():
            return None
        areas[run.config].append(float(json.loads(results.read_text())["tradeoff"]["auc"]))
    return max(candidates, key=lambda config: statistics.mean(areas[config]))


def planned_runs(best: str | None) -> list[Run]:
    """Every run of the study: the screening, the paper phase at seed 42, and seeds 43 and 44
    for deebert, romebert and (once known) the paper phase's best other configuration."""
    seeded = [*ALWAYS_SEEDED, *([best] if best else [])]
    return [*plan("screening", list(CONFIGS), SEEDS[:1], None),
            *plan("paper", PAPER_CONFIGS, SEEDS[:1], None),
            *plan("paper", seeded, SEEDS[1:], None)]



