"""How much dearer is a 12-layer training step than a 6-layer one, under the same load?

    GLUE_DIR=../shared/glue_data python bench/depth12_step_ratio.py [--rounds 8]

`bench/depth12_step_cost.py` times whole CLI runs one after another; on a shared machine the
load moves between them. Here both models live in one process and their steps alternate (the
order flips every round), so each pair of steps sees the same load: RomeBERT-SD's step (every
exit's loss: the final task loss plus self-distillation, one backward, one AdamW step) on
batches of 16 sentences of the screening's seeded SST-2 subset, one thread, each backbone's own
tokenizer. Writes the medians and their ratio to `bench/results/depth12_step_ratio.json`.

    python bench/depth12_step_ratio.py --estimate --screening-seconds 674

turns the stored ratio into each depth12 run's expected training time
(`bench/results/depth12_estimate.json`): the MiniLM screening's RomeBERT-SD SST-2 run
(`--screening-seconds`, from docs/study.md's sst2 screening table) times the ratio, times each
configuration's cost relative to RomeBERT-SD (`bench/results/study_cost.json`, measured side
by side on 6 layers). Per-exit groups cost about (L+1)/2 backward passes per step against
about 1.4 for final + SD (README), so their relative cost is scaled by (12+1)/(6+1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from gradsurg.data.collate import GlueCollator, tokenize_dataset
from gradsurg.data.glue import get_task
from gradsurg.multiexit.losses.terms import LOSS_TERMS
from gradsurg.multiexit.model import MultiExitModel
from gradsurg.programs.multiexit_glue.data import forward, load_split

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # depth_study.py, for the phase's configurations
BACKBONES = ("mpnet-base", "minilm")
BATCH = 16


def setup(name: str, rows: int):
    torch.manual_seed(0)
    model, tokenizer = MultiExitModel.from_backbone(name, num_labels=2, pooling="mean")
    data = tokenize_dataset(load_split(get_task("sst2"), "train", data_dir=None, rows=rows,
                                       shuffle_seed=42), tokenizer, max_length=128)
    collate = GlueCollator(tokenizer)
    batches = [collate([data[i] for i in range(start, start + BATCH)])
               for start in range(0, rows, BATCH)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    terms = [LOSS_TERMS.build("final_task", model.num_exits, where="bench"),
             LOSS_TERMS.build("self_distillation", model.num_exits, where="bench")]
    return model.train(), batches, optimizer, terms


def step(model, batch, optimizer, terms) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    logits = forward(model, batch)
    sum(term(logits, batch["labels"]) for term in terms).backward()
    optimizer.step()
    return time.perf_counter() - start


#: Configurations trained with one loss group per exit (their cost grows with depth).
PER_EXIT = ("exit_upgrad", "exit_pcgrad", "exit_imtlg")


def estimate(screening_seconds: float) -> dict:
    """Expected minutes of each depth12 run from the stored ratio and relative costs."""
    import depth_study

    ratio = json.loads((HERE / "results" / "depth12_step_ratio.json").read_text())[
        "ratio_12_over_6_layers"]
    cost = json.loads((HERE / "results" / "study_cost.json").read_text())["configs"]
    sd_minutes = screening_seconds * ratio / 60
    minutes = {}
    for config in [*depth_study.DEPTH12_CONFIGS, *depth_study.DEPTH12_NEW_METHODS]:
        relative = cost[config]["relative_to_romebert_sd"] if config in cost else None
        if relative is not None and config in PER_EXIT:
            relative *= (12 + 1) / (6 + 1)
        minutes[config] = None if relative is None else round(sd_minutes * relative)
    return {"ratio_12_over_6_layers": ratio, "minilm_screening_romebert_sd_seconds":
            screening_seconds, "training_minutes": minutes,
            "phase_minutes_two_at_a_time": round(sum(m for m in minutes.values() if m) / 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--estimate", action="store_true",
                        help="only turn the stored ratio into per-run estimates")
    parser.add_argument("--screening-seconds", type=float, default=674.0,
                        help="training seconds of MiniLM's screening RomeBERT-SD SST-2 run")
    args = parser.parse_args()
    if args.estimate:
        report = estimate(args.screening_seconds)
        (HERE / "results" / "depth12_estimate.json").write_text(json.dumps(report, indent=2)
                                                                + "\n")
        print(json.dumps(report, indent=2))
        return
    torch.set_num_threads(1)
    parts = {name: setup(name, BATCH * (args.rounds + 1)) for name in BACKBONES}
    seconds: dict[str, list[float]] = {name: [] for name in BACKBONES}
    load = os.getloadavg()
    for round_ in range(args.rounds + 1):  # round 0 warms up, not counted
        order = BACKBONES if round_ % 2 == 0 else BACKBONES[::-1]
        for name in order:
            model, batches, optimizer, terms = parts[name]
            took = step(model, batches[round_], optimizer, terms)
            if round_:
                seconds[name].append(round(took, 3))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    report = {
        "what": "seconds per RomeBERT-SD training step, batch 16 SST-2 sentences (seeded "
                "8,000-sentence subset), one thread, 12-layer and 6-layer steps alternating",
        "rounds": args.rounds, "load_average_at_start": [round(x, 2) for x in load],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "seconds": seconds, "median_seconds": medians,
        "ratio_12_over_6_layers": round(medians["mpnet-base"] / medians["minilm"], 2),
        "torch": torch.__version__,
    }
    (HERE / "results" / "depth12_step_ratio.json").write_text(json.dumps(report, indent=2)
                                                               + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
