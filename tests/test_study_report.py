"""bench/study.py: the planned runs' commands, and the report from finished runs (no training)."""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import torch
from fake_runs import DEEBERT, ROMEBERT, write_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # held-out sweeps over a few examples


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study", ROOT / "bench" / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["study"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_planned_run_is_a_valid_recipe(study):
    from gradsurg.recipes import apply_overrides, read_recipe, validate_recipe

    runs = [*study.plan("screening", list(study.CONFIGS), [42], None),
            *study.plan("paper", study.PAPER_CONFIGS, [42, 43], None)]
    assert len(runs) == 2 * len(study.CONFIGS) + 2 * len(study.PAPER_CONFIGS) * 2
    for run in runs:
        command = run.command(Path("/tmp/runs"))
        assert command[-1] == "--resume" and f"seed-{run.seed}" in command[-2]
        sets = [command[i + 1] for i, item in enumerate(command) if item == "--set"]
        recipe = apply_overrides(read_recipe(Path(command[4])), sets)
        validate_recipe(recipe, source=shlex.join(command))


def test_report_compares_configurations_with_commits_facts_and_seed_spread(study, tmp_path):
    runs = tmp_path / "runs"
    base = runs / "screening" / "sst2"
    facts = {"train": {"joint": {"steps": 3, "seconds": 1.0, "project/fired": 0.25,
                                 "cosine/final/sd": 0.4}}}
    write_run(base / "romebert" / "seed-42", "romebert", ROMEBERT, [0.75, 0.75], extra=facts)
    (base / "romebert" / "seed-42" / "commit.txt").write_text("abcdef1234567\n")
    (base / "romebert" / "seed-42" / "command.txt").write_text(
        f"/wt/.venv/bin/python -m gradsurg run /wt/recipes/romebert_glue.yaml --set task=sst2 "
        f"--set 'combiner={{name: project}}' --output {base}/romebert/seed-42 --resume\n")
    write_run(base / "deebert" / "seed-42", "deebert", DEEBERT, [0.5, 1.0],
              extra={"tradeoff": {"auc": 0.8}})
    per_exit = {"train": {"joint": {"steps": 3, "seconds": 1.0, "upgrad/projected": 1.5,
                                    "cosine/exit1/exit2": 0.2, "cosine/exit1/exit3": -0.1,
                                    "cosine/exit2/exit3": 0.5}}}
    write_run(base / "exit_upgrad" / "seed-42", "romebert", ROMEBERT, [0.75, 0.75],
              extra=per_exit)
    write_run(base / "deebert" / "seed-43", "deebert", DEEBERT, [0.5, 0.5],
              extra={"tradeoff": {"auc": 0.6}})
    output = tmp_path / "docs" / "study.md"
    written = study.write_report(runs, output)
    text = output.read_text()
    assert "### sst2, screening" in text
    # fired, conflicts, projected, negative weights, final/SD cosine, mean over cosines
    assert "| romebert | abcdef1234 | 0.250 | - | - | - | 0.400 | 0.400 |" in text
    assert "| deebert | 2 | 75.00 ± 35.36 | 70.00 ± 14.14 |" in text
    assert "| exit_upgrad | ? | - | - | 1.500 | - | - | 0.200 |" in text
    assert ("python -m gradsurg run recipes/romebert_glue.yaml --set task=sst2 --set "
            "'combiner={name: project}' --output RUNS/screening/sst2/romebert/seed-42 "
            "--resume") in text
    assert "screening / stsb / exit_upgrad / seed 42" in text  # not finished: listed
    plots = [path for path in written if path.suffix == ".png"]
    assert plots and all(path.parent == tmp_path / "docs" / "study" for path in plots)
    assert all(f"study/{path.name}" in text for path in plots)


def test_plan_runs_the_screenings_best_two_on_the_paper_schedule_and_seeds_the_best(study,
                                                                                   tmp_path):
    assert [*study.PAPER_MODES, "romebert_reversed", "exit_upgrad"] == study.PAPER_CONFIGS
    assert study.best_paper_config(tmp_path) is None  # nothing finished: not chosen yet
    candidates = study.seeded_candidates()
    assert "deebert" not in candidates and "romebert" not in candidates
    areas = {"deebert_sd": 0.70, "romebert_sd": 0.72, "romebert_reversed": 0.71,
             "exit_upgrad": 0.60}
    for run in study.plan("paper", candidates, [42], None):
        folder = run.folder(tmp_path)
        folder.mkdir(parents=True)
        # romebert_sd is best on mrpc; deebert_sd's rte makes it best on the mean over tasks
        auc = areas[run.config] + (0.05 if (run.config, run.task) == ("deebert_sd", "rte") else 0)
        (folder / "results.json").write_text(json.dumps({"tradeoff": {"auc": auc}}))
    assert study.best_paper_config(tmp_path) == "deebert_sd"
    seeded = {(r.config, r.seed) for r in study.planned_runs("deebert_sd") if r.seed != 42}
    assert seeded == {(c, s) for c in ("deebert", "romebert", "deebert_sd") for s in (43, 44)}


def test_report_answers_the_questions_and_keeps_the_hand_written_conclusions(study, tmp_path):
    runs = tmp_path / "runs"
    base = runs / "screening" / "sst2"
    # per example (time: exit 1 = 50%, exit 2 = 100%); DeeBERT weak at exit 1, strong at exit 2
    write_run(base / "deebert" / "seed-42", "deebert", DEEBERT, [0.5, 1.0])
    write_run(base / "romebert_sd" / "seed-42", "romebert_sd", ROMEBERT, [0.75, 0.75])
    write_run(base / "romebert" / "seed-42", "romebert", ROMEBERT, [0.75, 0.5])
    output = tmp_path / "docs" / "study.md"
    study.write_report(runs, output)
    text = output.read_text()
    # within 50% time (exit 1 only) the one-stage runs are right on 3 of 4, DeeBERT on 2
    assert "- best within 25%: no configuration has a point there" in text
    assert "- best within 50%: romebert_sd, romebert (75.00)" in text
    assert "- best within 100%: deebert, romebert_sd, romebert (100.00)" in text
    # held out (halves {0, 1}, {2, 3}; worked by hand in test_compare for DeeBERT's 75.00):
    # the one-stage logits' picks are right on every example of the other half
    assert "- best within 50%, setting chosen on the other half of the evaluation set: " \
           "romebert_sd, romebert (100.00)" in text
    assert "| deebert | - | - | - | 75.00 (62.5) | 75.00 (62.5) | 75.00 (62.5) |" in text
    assert "- one-stage configurations at or above deebert at every budget <= 60%: " \
           "romebert_sd, romebert\n" in text
    assert "- romebert against romebert_sd (SD alone): final exit 50.00 vs 75.00, area 93.75 " \
           "vs 93.75, higher at 0 and lower at 0 of 6 budgets" in text
    # four labels, two of each class: the first most frequent one is 0, right on half
    assert "Majority-class baseline (every example labelled 0, the evaluation set's most " \
           "frequent label): accuracy x 100 = 50.00." in text
    # hand-written conclusions survive a rewrite, in the same place
    output.write_text(text.replace("### sst2", f"## Conclusions\n\nPick X.\n\n"
                                   f"{study.DEPTH_ANSWERS}\n\nAt 12 layers, Y.\n\n### sst2", 1))
    study.write_report(runs, output)
    again = output.read_text()
    assert again.splitlines().count("## Conclusions") == 1 and "Pick X." in again
    assert again.splitlines().count(study.DEPTH_ANSWERS) == 1
    assert again.index("Pick X.") < again.index("At 12 layers, Y.") < again.index("### sst2")


def test_report_prices_each_configuration_from_the_side_by_side_cost_file(study, tmp_path):
    cost = tmp_path / "study_cost.json"
    cost.write_text(json.dumps({
        "commit": "0123456789abcdef", "rounds": 2, "train_rows": 256, "task": "mrpc",
        "settings": ["batch_size=8"], "steps_per_stage": 1377,
        "configs": {"romebert_sd": {"seconds_per_step": {"joint": 0.6},
                                    "paper_mrpc_run_seconds": 826.2,
                                    "relative_to_romebert_sd": 1.0},
                    "deebert": {"seconds_per_step": {"stage1": 0.5, "stage2": 0.2},
                                "paper_mrpc_run_seconds": 963.9,
                                "relative_to_romebert_sd": 1.1667}}}))
    output = tmp_path / "study.md"
    study.write_report(tmp_path / "runs", output, cost_file=cost)
    text = output.read_text()
    assert "(commit 0123456789, 2 rounds" in text
    assert "| deebert | stage1 0.50, stage2 0.20 | 16.1 | 1.17 |" in text
    study.write_report(tmp_path / "runs", output, cost_file=tmp_path / "absent.json")
    assert "## Training cost" not in output.read_text()


def test_seed_table_and_leaders_use_every_seed_and_compare_like_with_like(study, tmp_path):
    runs = tmp_path / "runs"
    base = runs / "paper" / "rte"

    def seeded(config, seed, final, auc, within_30):
        best = {"30": None if within_30 is None else {"accuracy": within_30, "time_percent": 29},
                "60": {"accuracy": final, "time_percent": 55}}
        write_run(base / config / f"seed-{seed}", config, DEEBERT, [0.5, final],
                  extra={"tradeoff": {"auc": auc, "best_within": best}})

    for seed, (d, r) in zip((42, 43, 44), [(0.50, 0.75), (1.00, 0.75), (0.75, 1.00)]):
        seeded("deebert", seed, d, 0.60, 0.5)       # final 75.00 ± 25.00, within 30% 50.00
        seeded("romebert", seed, r, 0.70, None if seed == 44 else 0.6)
    seeded("exit_upgrad", 42, 1.0, 0.9, 0.9)
    seeded("exit_upgrad", 43, 1.0, 0.9, 0.9)      # two seeds: shown, not ranked against three
    study.write_report(runs, tmp_path / "study.md")
    text = (tmp_path / "study.md").read_text()
    assert "| configuration | seeds | final exit | area | <= 30% | <= 60% |" in text
    assert "| deebert | 3 | 75.00 ± 25.00 | 60.00 ± 0.00 | 50.00 ± 0.00 | 75.00 ± 25.00 |" in text
    # romebert's seed 44 has no point within 30%: the mean is over the two that do
    assert "| romebert | 3 | 83.33 ± 14.43 | 70.00 ± 0.00 | 60.00 ± 0.00 | 83.33 ± 14.43 |" in text
    assert "| exit_upgrad | 2 | 100.00 ± 0.00 | 90.00 ± 0.00 | 90.00 ± 0.00 |" in text
    leaders = "by the mean over 3 seeds (deebert, romebert): "
    assert f"- best final exit {leaders}romebert (83.33)" in text
    assert f"- best area {leaders}romebert (70.00)" in text
    # a budget where a seed has no point is not ranked on a partial mean
    assert f"- best within 30% {leaders}deebert (50.00)" in text
    assert f"- best within 60% {leaders}romebert (83.33)" in text
    # held out from each seed's logits (all DeeBERT's here: 75.00 at 62.5%, see test_compare)
    assert "| deebert | 3 | - | - | - | 75.00 ± 0.00 | 75.00 ± 0.00 | 75.00 ± 0.00 |" in text
    assert "| exit_upgrad | 2 | - | - | - | 75.00 ± 0.00 |" in text
    assert f"- best within 50%, held out {leaders}deebert, romebert (75.00)" in text


def test_recommend_takes_the_top_unless_the_seeds_cannot_tell_then_the_cheapest(study):
    cost = {"deebert": 1.25, "romebert": 1.38, "exit_upgrad": 2.49}
    clear = {"deebert": [80.0, 81.0, 82.0], "romebert": [70.0, 71.0, 72.0],
             "exit_upgrad": [90.0, 91.0, 92.0]}
    pick, why = study.recommend(clear, cost)
    assert pick == "exit_upgrad" and "highest mean score (91.00)" in why
    # exit_upgrad's lead (0.5) is inside the seeds' spread (sd 2.0): deebert is cheaper
    close = {"deebert": [79.0, 81.0, 83.0], "romebert": [70.0, 71.0, 72.0],
             "exit_upgrad": [79.5, 81.5, 83.5]}
    pick, why = study.recommend(close, cost)
    assert pick == "deebert"
    assert why.startswith("exit_upgrad, deebert are within the seeds' spread (2.00)")


METRIC = {"mrpc": "f1", "rte": "accuracy"}


@pytest.mark.slow
def test_recommendation_scores_average_held_out_budgets_over_both_tasks(study, tmp_path):
    from gradsurg.data.glue import get_task
    from gradsurg.multiexit.evaluation.held_out import held_out_best_within
    from gradsurg.multiexit.policies import EntropyPolicy

    runs = tmp_path / "runs"
    assert study.recommendation_scores(runs) is None  # nothing finished
    labels = [0, 1] * 4
    generator = torch.Generator().manual_seed(0)
    logits = {}  # (config, seed) -> six exits' outputs, the same on both tasks

    def finished(config, task, seed, auc=0.5):
        if (config, seed) not in logits:
            logits[config, seed] = torch.randn(6, len(labels), 2, generator=generator) * 3
        write_paper_run(study, runs, config, task, seed, logits[config, seed].tolist(), labels,
                        auc)

    for config in study.seeded_candidates():  # seed 42 of the candidates: exit_upgrad best
        for task in study.PHASES["paper"]:
            finished(config, task, 42, auc=0.9 if config == "exit_upgrad" else 0.5)
    for config in ("deebert", "romebert", "exit_upgrad"):
        for task in study.PHASES["paper"]:
            for seed in study.SEEDS:
                if (config, seed) != ("exit_upgrad", 42) and (config, task, seed) != (
                        "exit_upgrad", "rte", 44):
                    finished(config, task, seed)
    assert study.recommendation_scores(runs) is None  # one seeded run short
    finished("exit_upgrad", "rte", 44)
    scores = study.recommendation_scores(runs)
    assert list(scores) == ["deebert", "romebert", "exit_upgrad"]
    for config, per_seed in scores.items():
        for seed, score in zip(study.SEEDS, per_seed):
            expected = []
            for task, metric in METRIC.items():
                found = held_out_best_within(logits[config, seed], torch.tensor(labels),
                                             get_task(task), EntropyPolicy, {},
                                             [25, 30, 40, 50, 60, 100])
                expected += [100 * found[b][metric] for b in study.RECOMMEND_BUDGETS]
            assert score == pytest.approx(sum(expected) / len(expected))
    # the report prints the rule's table, each task's part, and the rule's pick
    per_task = study.held_out_scores(runs)
    cost_file = tmp_path / "cost.json"
    cost_file.write_text(json.dumps({"configs": {
        c: {"relative_to_romebert_sd": r} for c, r in
        [("deebert", 1.25), ("romebert", 1.38), ("exit_upgrad", 2.49)]}}))
    section = "\n".join(study.recommendation_section(runs, cost_file))
    for config, per_seed in scores.items():
        assert statistics.mean(per_seed) == pytest.approx(statistics.mean(
            statistics.mean(values) for values in per_task[config].values()))
        row = next(line for line in section.splitlines() if line.startswith(f"| {config} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1:4] == [f"{v:.2f}" for v in per_seed]
        assert cells[4].startswith(f"{statistics.mean(per_seed):.2f} ± ")
        assert cells[5].startswith(f"{statistics.mean(per_task[config]['mrpc']):.2f}")
        assert cells[6].startswith(f"{statistics.mean(per_task[config]['rte']):.2f}")
    pick, _ = study.recommend(scores, {"deebert": 1.25, "romebert": 1.38, "exit_upgrad": 2.49})
    assert f"Recommended: **{pick}**" in section
    # a run with no held-out point within a budget is refused, not averaged over fewer
    folder = study.Run("paper", "rte", "romebert", 44).folder(runs)
    shutil.rmtree(folder)
    write_run(folder, "romebert", DEEBERT, [0.5, 1.0], task="rte")  # two exits: 50% at least
    with pytest.raises(ValueError, match="seed-44: no held-out point within 25%"):
        study.recommendation_scores(runs)



def write_paper_run(study, runs, config, task, seed, logits, labels, auc=0.5):
    """A finished paper-phase run folder of `config` with these exits' outputs."""
    write_run(study.Run("paper", task, config, seed).folder(runs), config, logits, [0.5] * 6,
              task=task, labels=labels,
              extra={"tradeoff": {"auc": auc}, "primary_metric": METRIC[task],
                     "exit_metrics": [{METRIC[task]: 0.5}] * 6})


@pytest.mark.slow
def test_report_command_names_a_run_it_cannot_score_in_one_error_line(study, tmp_path):
    import subprocess

    runs = tmp_path / "runs"
    labels = [0, 1] * 4
    logits = [[[1.0, 0.0]] * len(labels)] * 6
    every = [*study.plan("paper", study.seeded_candidates(), study.SEEDS[:1], None),
             *study.plan("paper", ["deebert", "romebert", "exit_upgrad"], study.SEEDS, None)]
    for run in set(every):
        write_paper_run(study, runs, run.config, run.task, run.seed, logits, labels,
                        auc=0.9 if run.config == "exit_upgrad" else 0.5)
    short = study.Run("paper", "rte", "romebert", 44).folder(runs)
    shutil.rmtree(short)
    write_run(short, "romebert", DEEBERT, [0.5, 1.0], task="rte")  # two exits: 50% at least
    report = tmp_path / "docs" / "study.md"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "study.py"), "--report",
                           "--runs", str(runs), "--report-file", str(report)],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"error: {short}: no held-out point within 25%"]
    assert not report.parent.exists()  # neither the report nor its figures


@pytest.mark.slow
def test_the_rule_is_checked_on_other_splits_of_the_dev_set(study, tmp_path):
    from gradsurg.data.glue import get_task
    from gradsurg.multiexit.evaluation.comparison import held_out_budgets
    from gradsurg.multiexit.evaluation.held_out import held_out_best_within
    from gradsurg.multiexit.policies import EntropyPolicy
    from gradsurg.run_folder import load_run

    runs = tmp_path / "runs"
    labels = [0, 1] * 6
    generator = torch.Generator().manual_seed(1)
    right = [[[0.0, 4.0] if y else [4.0, 0.0] for y in labels]] * 6  # every exit right, sure
    every = [*study.plan("paper", study.seeded_candidates(), study.SEEDS[:1], None),
             *study.plan("paper", ["deebert", "romebert", "exit_upgrad"], study.SEEDS, None)]
    for run in set(every):
        logits = right if run.config == "romebert" else (
            torch.randn(6, len(labels), 2, generator=generator).tolist())
        write_paper_run(study, runs, run.config, run.task, run.seed, logits, labels,
                        auc=0.9 if run.config == "exit_upgrad" else 0.5)
    # the split seed reaches the held-out numbers
    noisy = load_run(study.Run("paper", "mrpc", "deebert", 43).folder(runs))
    other = held_out_budgets(noisy, seed=5)
    assert other == held_out_best_within(noisy.logits, noisy.labels, get_task("mrpc"),
                                         EntropyPolicy, {}, [25, 30, 40, 50, 60, 100], seed=5)
    assert other != held_out_budgets(noisy)
    # a configuration right on every example is picked on every split
    assert study.picks_over_splits(runs, {}, study.OTHER_SPLITS) == {
        "romebert": len(study.OTHER_SPLITS)}
    section = "\n".join(study.recommendation_section(runs, tmp_path / "no-cost.json"))
    assert "Recommended: **romebert**" in section
    assert f"it picks romebert {len(study.OTHER_SPLITS)} times." in section
