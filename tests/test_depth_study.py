"""bench/depth_study.py's 12-layer phase: the planned runs' commands and folders (no training)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
import torch
from bench_modules import load_bench
from quoted_numbers import assert_quotes_only

from gradsurg.multiexit import backbones
from gradsurg.recipes import apply_overrides, read_recipe, validate_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def depth():
    return load_bench("depth_study")


def sets_of(command: list[str]) -> list[str]:
    return [command[i + 1] for i, item in enumerate(command) if item == "--set"]


def resolved(command: list[str]) -> dict:
    return apply_overrides(read_recipe(Path(command[4])), sets_of(command))


def test_depth12_is_the_screenings_sst2_run_on_the_12_layer_backbone(depth, monkeypatch):
    monkeypatch.setattr(backbones, "find_parts", lambda model: ([], "0"))  # CI: not installed
    runs_dir = Path("/tmp/runs")
    plan = depth.plan("depth12")
    assert [run.config for run in plan] == ["deebert", "romebert_sd", "romebert",
                                            "romebert_reversed", "pcd", "blockwise_project",
                                            "gradient_equilibrium"]
    six_layers = {run.config: run for run in depth.plan("methods6") if run.task == "sst2"}
    for run in plan:
        command = run.command(runs_dir)
        assert command[-1] == "--resume"
        assert command[-2] == str(runs_dir / "depth12" / "sst2" / run.config /
                                  "model=mpnet-base,lr=5e-5" / "seed-42")
        recipe = resolved(command)
        config = validate_recipe(recipe, source=shlex.join(command))[1]
        twin = (six_layers[run.config] if run.config in depth.NEW_METHODS
                else depth.study.Run("screening", "sst2", run.config, 42))
        screening = resolved(twin.command(runs_dir))
        # each 12-layer run with two or more groups logs its conflict map, which trains the same
        assert recipe.pop("conflict_blocks", None) == (
            None if run.config == "deebert" else "per_layer")
        # every 5th step measured where the combiner skips the matrix (sum): 100 per epoch
        assert (recipe.pop("log_every", 50), screening.pop("log_every", 50)) == (
            50 if run.config == "deebert" else 5, 50)
        # and saves every 50 steps, so a stopped session loses minutes, not hours
        assert (recipe.pop("checkpoint_every"), screening.pop("checkpoint_every")) == (50, 200)
        assert recipe["model"] == "mpnet-base" and screening["model"] == "minilm"
        # everything else is the screening's run: the 6- and 12-layer results compare directly
        assert {**recipe, "model": None} == {**screening, "model": None}
        assert (config.train_rows, config.epochs, config.batch_size, config.optimizer.lr,
                config.seed) == (8000, 1, 16, 5e-5, 42)
    assert len({run.folder(runs_dir) for run in plan}) == len(plan)


def test_depth12_small_is_the_12_layer_run_on_the_first_3000_sentences(depth, monkeypatch):
    """Per-exit UPGrad's 12-layer epoch does not fit a session: it and the runs it is read
    against train on 3,000 sentences, each otherwise exactly its 8,000-sentence 12-layer run."""
    monkeypatch.setattr(backbones, "find_parts", lambda model: ([], "0"))  # CI: not installed
    runs_dir = Path("/tmp/runs")
    plan = depth.plan("depth12_small")
    # the longest first, so that two lanes end together
    assert [run.config for run in plan] == ["exit_upgrad", "deebert", "romebert_sd", "pcd"]
    for run in plan:
        full = depth.depth12_run(run.config)
        assert run.folder(runs_dir) == (runs_dir / "depth12_small" / "sst2" / run.config /
                                        "model=mpnet-base,lr=5e-5,train_rows=3000" / "seed-42")
        small, whole = resolved(run.command(runs_dir)), resolved(full.command(runs_dir))
        config = validate_recipe(small, source="depth12_small")[1]
        assert (config.train_rows, config.threads) == (3000, 1)
        assert {**small, "train_rows": None} == {**whole, "train_rows": None}
    # full-size per-exit UPGrad is planned nowhere else at 12 layers
    assert "exit_upgrad" not in {run.config for run in depth.plan("depth12")}


def test_six_layer_twins_are_the_screenings_runs(depth):
    """methods6 re-runs RomeBERT and the reversed projection exactly as the screening did (its
    logits were not kept), and runs the new methods at that setting on both tasks."""
    runs_dir = Path("/tmp/runs")
    plan = depth.plan("methods6")
    assert sorted((run.task, run.config) for run in plan) == sorted(
        [(task, config) for task in ("stsb", "sst2") for config in depth.NEW_METHODS]
        + [("sst2", "romebert"), ("sst2", "romebert_reversed")])
    for run in plan:
        recipe = resolved(run.command(runs_dir))
        config = validate_recipe(recipe, source="methods6")[1]
        if run.config in depth.study.CONFIGS:
            screening = resolved(depth.study.Run("screening", run.task, run.config, 42).command(
                runs_dir))
            assert recipe == screening
        else:
            assert (config.optimizer.lr, config.gamma, config.train_rows if run.task == "sst2"
                    else None) == (5e-5, 0.9, 8000 if run.task == "sst2" else None)
    assert "pcd" not in depth.study.CONFIGS  # the first study's plan stays as it ran


def test_tuned_grid_goes_past_its_edges_and_the_matched_runs_stay_as_planned(depth):
    """Every configuration of the tuned phase also trains at 2e-4 on both tasks (the first
    grid's largest rate, 1e-4, won most choices) and at 4e-4 and 8e-4 on STS-B (each time the
    largest so far won there); the matched phase keeps the issue's three."""
    runs_dir = Path("/tmp/runs")
    rates = {}
    for run in depth.plan("tuned"):
        config = validate_recipe(resolved(run.command(runs_dir)), source="tuned")[1]
        rates.setdefault((run.task, run.config), []).append(config.optimizer.lr)
    assert set(rates) == {(task, config) for task in ("stsb", "sst2")
                          for config in ("deebert", "romebert_sd", "exit_upgrad")}
    for (task, config), found in rates.items():
        per_rate = 1 if config == "deebert" else 2  # SD's two gammas
        edge = [2e-4, 4e-4, 8e-4] if task == "stsb" else [2e-4, 4e-4]
        assert sorted(found) == sorted([2e-5, 5e-5, 1e-4, *edge] * per_rate), (task, config)
    matched = {validate_recipe(resolved(run.command(runs_dir)), source="matched")[1]
               .optimizer.lr for run in depth.plan("matched")}
    assert matched == {2e-5, 5e-5, 1e-4}


def test_conflicts6_reruns_the_6_layer_twins_of_the_12_layer_maps_with_logging(depth):
    runs_dir = Path("/tmp/runs")
    plan = depth.plan("conflicts6")
    twelve = {run.config for phase in ("depth12", "depth12_small") for run in depth.plan(phase)
              if run.config != "deebert"}
    assert {run.config for run in plan} == twelve and len(plan) == len(twelve)
    methods6 = {run.config: run for run in depth.plan("methods6") if run.task == "sst2"}
    for run in plan:
        twin = methods6.get(run.config) or depth.study.Run("screening", "sst2", run.config, 42)
        recipe = resolved(run.command(runs_dir))
        validate_recipe(recipe, source="conflicts6")  # the logging is accepted for each
        assert (recipe.pop("conflict_blocks"), recipe.pop("log_every")) == ("per_layer", 5)
        plain = resolved(twin.command(runs_dir))
        assert plain.pop("log_every", 50) == 50
        assert recipe == plain
        assert run.folder(runs_dir) == runs_dir / "conflicts6" / "sst2" / run.config / \
            "lr=5e-5" / "seed-42"


def test_elbert_phase_reruns_the_measured_recipe_at_both_starts_and_three_seeds(depth):
    """Seed 42 at each start is the stored measurement's recipe but for naming its start (so
    the re-run checks it); seeds 43 and 44 differ from it in the seed alone."""
    import yaml

    runs_dir = Path("/tmp/runs")
    plan = depth.plan("elbert")
    assert sorted((run.init, run.seed) for run in plan) == [
        (init, seed) for init in ("0", "4.0") for seed in (42, 43, 44)]
    stored = {"0": "elbert_exit_weights_lr", "4.0": "elbert_exit_weights_init4"}
    for run in plan:
        recipe = resolved(run.command(runs_dir))
        validate_recipe(recipe, source="elbert")
        measured = yaml.safe_load((ROOT / "bench" / "results" / stored[run.init] /
                                   "recipe.yaml").read_text())
        expected = {**measured, "seed": run.seed,  # the start said outright, both ways
                    "loss_groups": {"exits": {"name": "learned_exit_weights",
                                              "init": float(run.init)}}}
        # a key the stored recipe has and this one lacks is at its default, null
        assert {key: recipe.get(key) for key in {*recipe, *expected}} == {
            key: expected.get(key) for key in {*recipe, *expected}}
        assert set(recipe) - set(expected) == set()
        assert run.command(runs_dir)[-2:] == [str(run.folder(runs_dir)), "--resume"]
    assert len({run.folder(runs_dir) for run in plan}) == len(plan)


def test_list_shows_each_depth12_run_and_whether_it_finished(depth, monkeypatch, tmp_path,
                                                            capsys):
    finished = depth.plan("depth12")[1].folder(tmp_path)
    finished.mkdir(parents=True)
    (finished / "results.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", ["depth_study.py", "--list", "--phase", "depth12",
                                      "--runs", str(tmp_path)])
    depth.main()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(depth.plan("depth12"))
    assert lines[1] == f"done  {finished}"
    assert all(line.startswith("todo  ") for i, line in enumerate(lines) if i != 1)


def finish(run, runs_dir: Path, auc: float) -> None:
    run.folder(runs_dir).mkdir(parents=True)
    (run.folder(runs_dir) / "results.json").write_text(json.dumps({"tradeoff": {"auc": auc}}))


def test_seeds12_seeds_deebert_and_the_sum_at_once_and_the_best_once_the_12_layers_are_in(
        depth, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(backbones, "find_parts", lambda model: ([], "0"))
    first = depth.plan("depth12")
    areas = {"romebert": 0.61, "romebert_reversed": 0.60, "pcd": 0.63,
             "blockwise_project": 0.55, "gradient_equilibrium": 0.62,
             "deebert": 0.99, "romebert_sd": 0.98}  # the always-seeded two are not candidates
    for run in first[:-1]:
        finish(run, tmp_path, areas[run.config])
    monkeypatch.setattr(sys, "argv", ["depth_study.py", "--phase", "seeds12", "--runs",
                                      str(tmp_path), "--list"])
    depth.main()
    listed, said = capsys.readouterr()
    assert [line.split("/")[-3:] for line in listed.splitlines()] == [
        [config, "model=mpnet-base,lr=5e-5", f"seed-{seed}"]
        for config in ("deebert", "romebert_sd") for seed in (43, 44)]
    assert said.startswith("note: the best other 12-layer configuration's seeds join once")
    # two phases share the lanes: the 12-layer phase's last run first, then the seeds
    monkeypatch.setattr(sys, "argv", ["depth_study.py", "--phase", "depth12", "--phase",
                                      "seeds12", "--runs", str(tmp_path), "--list"])
    depth.main()
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert listed == [["done", str(run.folder(tmp_path))] for run in first[:-1]] + [
        ["todo", str(run.folder(tmp_path))]
        for run in [first[-1], *depth.plan("seeds12", tmp_path)]]
    finish(first[-1], tmp_path, areas[first[-1].config])
    seeds = depth.plan("seeds12", tmp_path)
    assert [(run.config, run.seed) for run in seeds] == [
        (config, seed) for config in ("deebert", "romebert_sd", "pcd") for seed in (43, 44)]
    by_config = {run.config: run for run in first}
    for run in seeds:  # the seed-42 run's command but for its seed, in a sibling folder
        twin = by_config[run.config]
        assert run.folder(tmp_path) == twin.folder(tmp_path).parent / f"seed-{run.seed}"
        assert [item.replace(f"seed={run.seed}", "seed=42").replace(f"seed-{run.seed}",
                                                                       "seed-42")
                for item in run.command(tmp_path)] == twin.command(tmp_path)


@pytest.fixture(scope="module")
def report():
    return load_bench("depth_study_report")


def write_finished(folder: Path, right: torch.Tensor, task: str = "sst2") -> None:
    """A finished run whose every exit answers right exactly on `right` (accuracy task)."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    answer = torch.where(right, 0, 1)
    one = torch.nn.functional.one_hot(answer, 2).float() * 8
    save_file({"logits": torch.stack([one] * 6).contiguous(),
               "labels": torch.zeros(len(right), dtype=torch.long)},
              str(folder / "exit_logits.safetensors"))
    (folder / "results.json").write_text(json.dumps({
        "task": task, "mode": "deebert", "primary_metric": "accuracy",
        "exit_metrics": [{"accuracy": float(right.float().mean())}] * 6}))
    (folder / "commit.txt").write_text("0123456789abcdef\n")
    (folder / "stdout.log").write_text("not kept\n")


def test_report_tunes_on_one_half_scores_on_the_other_and_collects_small_files(
        depth, report, tmp_path):
    from gradsurg.multiexit.evaluation.held_out import split_halves

    runs = tmp_path / "runs"
    first, second = split_halves(16)
    lucky = torch.zeros(16, dtype=torch.bool)
    lucky[first] = True  # right on the first half only
    steady = torch.ones(16, dtype=torch.bool)
    steady[first[::4]] = False
    steady[second[::4]] = False
    deebert = [run for run in depth.plan("tuned") if run.task == "sst2"
               and run.config == "deebert"]
    write_finished(deebert[0].folder(runs), lucky)  # lr 2e-5
    write_finished(deebert[1].folder(runs), steady)  # lr 5e-5: the first study's setting
    text = report.write_report(runs, tmp_path / "depth_study.md").read_text()
    row = next(line for line in text.splitlines() if "tuned over 2" in line)
    assert row.startswith(f"| deebert | 2/{len(deebert)} | tuned over 2 | ")
    assert row.endswith("| lr=2e-5 & lr=5e-5 / lr=2e-5 & lr=5e-5 |")  # lucky, then steady
    assert "| 37.50 |" in row  # 0 on the half lucky never saw, 75 the other way
    untuned = next(line for line in text.splitlines() if "(first study)" in line)
    assert untuned.startswith("| deebert | 1 | lr=5e-5 (first study) | 75.00 |")
    assert "- tuned / sst2 / deebert / lr=1e-4 / seed 42" in text  # not finished yet
    # the 12-layer table puts each configuration's 6-layer twin beside it
    twelve = text.split("## 12 layers")[1].splitlines()
    assert "| deebert | 6 layers | 75.00 |" in "\n".join(twelve)
    assert "| deebert | 12 layers | - | - |" in "\n".join(twelve)
    # a finished 12-layer run's own conflict map, from the per-block cosines its log holds
    romebert = next(run for run in depth.plan("depth12") if run.config == "romebert")
    cosines = {0: (-0.2, 0.4, 0.3, -0.1), 11: (0.2, 0.4, 0.3, 0.1)}  # layers 1 and 12
    log = "\n".join(json.dumps(
        {"stage": "joint", "step": 50 * (i + 1),
         **{key: value for layer, each in cosines.items() for key, value in (
             (f"cosine/encoder.layers.{layer}/final/sd", each[i]),
             (f"conflict/encoder.layers.{layer}/final/sd", float(each[i] < 0)))}})
        for i in range(4)) + "\n"
    romebert.folder(runs).mkdir(parents=True)
    (romebert.folder(runs) / "train_log.jsonl").write_text(log)
    unfinished = report.write_report(runs, tmp_path / "again.md").read_text()
    assert "| romebert | 12 | not finished | | | |" in unfinished  # no map of half a run
    (romebert.folder(runs) / "train_log.jsonl").unlink()
    romebert.folder(runs).rmdir()
    write_finished(romebert.folder(runs), steady)
    (romebert.folder(runs) / "train_log.jsonl").write_text(log)
    # its 6-layer twin logged the map too and trained as its twin without logging did
    for run in (next(r for r in depth.plan(phase) if r.config == "romebert"
                     and r.task == "sst2") for phase in ("methods6", "conflicts6")):
        write_finished(run.folder(runs), steady)
    section = report.write_report(runs, tmp_path / "again.md").read_text().split(
        "## Where the loss groups conflict, at 6 and at 12 layers")[1]
    # layer 1 of 12 is in the lower third and conflicts on half the steps, layer 12 on none
    assert "| romebert | 12 | 1/2 | 50.0% | - | 0.0% |" in section
    assert "| romebert | 6 | finished, but its log holds no per-block cosines |" in section
    assert "| romebert | 0.00e+00 |" in section and "| pcd | not finished |" in section
    assert section.split("### romebert, 12 layers\n")[1].split("###")[0].count(
        "| encoder.layers.0 | 1 | 50.0% |") == 1
    copied = report.collect(runs, tmp_path / "kept")
    assert len(copied) == 5
    assert sorted(p.name for p in copied[0].iterdir()) == [
        "commit.txt", "exit_logits.safetensors", "results.json"]
    assert "train_log.jsonl" in {p.name for p in romebert.folder(tmp_path / "kept").iterdir()}


def test_elbert_section_scores_each_start_per_seed_and_over_seeds(depth, report, tmp_path):
    """From the stored seed-42 measurements, one of them also standing in for seed 43."""
    import shutil

    stored = {"0": "elbert_exit_weights_lr", "4.0": "elbert_exit_weights_init4"}
    for run in depth.plan("elbert"):
        if run.seed in (42, 43) and not (run.init == "4.0" and run.seed == 43):
            shutil.copytree(ROOT / "bench" / "results" / stored[run.init], run.folder(tmp_path))
    section = "\n".join(report.elbert_section(tmp_path))
    # held out at each budget; the stored notes give 50.3% and 61.7% not held out
    assert "| elbert, init 4.0 | seed 43 | - | - | - | - | - | - |" in section
    assert "| init 0 | 42 | 82.68 | 61.7% |" in section and "| init 0 | 43 | 82.68 | 61.7% |" \
        in section
    assert "| init 4.0 | 42 | 81.77 | 50.3% |" in section
    assert "| init 0 | mean ± sd of 2 | 82.68 ± 0.00 | 61.7 ± 0.0% |" in section
    assert "init 4.0 | mean ± sd" not in section  # one seed has no spread
    row = next(line for line in section.splitlines()
               if line.startswith("| elbert, init 0 | seed 42 |"))
    cells = [cell.strip() for cell in row.split("|")[3:-1]]
    assert len(cells) == 6 and "-" not in cells, row


def test_seeds_section_waits_then_shows_each_seed_and_the_mean_over_three(depth, report,
                                                                          tmp_path):
    import statistics

    waiting = "\n".join(report.seeds_section(tmp_path))
    assert "The best other configuration is picked once" in waiting
    assert "| deebert | 43 | - |" in waiting and "| romebert_sd | 44 | - |" in waiting
    first = depth.plan("depth12")
    for index, run in enumerate(first):
        right = torch.ones(16, dtype=torch.bool)
        right[:index % 4] = False
        write_finished(run.folder(tmp_path), right)
        results = json.loads((run.folder(tmp_path) / "results.json").read_text())
        auc = 0.7 if run.config == "gradient_equilibrium" else 0.5
        results["tradeoff"] = {"auc": auc}
        (run.folder(tmp_path) / "results.json").write_text(json.dumps(results))
    seeded = depth.plan("seeds12", tmp_path)
    for run in seeded:
        if run.config == "deebert":  # right on 14 and 13 of 16
            right = torch.ones(16, dtype=torch.bool)
            right[: run.seed - 41] = False
            write_finished(run.folder(tmp_path), right)
    section = report.seeds_section(tmp_path)
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in section
            if line.startswith("| ")}
    full = [float(rows["deebert", str(seed)].split("|")[-2]) for seed in (42, 43, 44)]
    assert full == [100.0, 87.5, 81.25]
    mean = rows["deebert", "mean ± sd"].split("|")[-2].strip()
    assert mean == f"{statistics.mean(full):.2f} ± {statistics.stdev(full):.2f}"
    assert ("gradient_equilibrium", "43") in rows and ("gradient_equilibrium", "mean ± sd") \
        not in rows  # its seeds have not run
    assert rows["gradient_equilibrium", "43"].count(" - ") == len(report.BUDGETS)


DOC = ROOT / "docs" / "depth_study.md"


def test_the_hand_written_conclusions_quote_only_numbers_of_the_report_below_them():
    text = DOC.read_text(encoding="utf-8")
    conclusions, tables = text.split("\n## Conclusions\n", 1)[1].split("\n## ", 1)
    assert_quotes_only(conclusions, tables, at_least=20, message=(
        "docs/depth_study.md's conclusions quote {number}, which the report below lacks"))


@pytest.mark.slow
def test_the_report_is_what_the_kept_runs_give(report, tmp_path):
    """docs/depth_study.md is the report of bench/results/depth_study as committed (its
    conclusions kept): rewriting it from the kept runs changes nothing."""
    written = tmp_path / "depth_study.md"
    written.write_text(DOC.read_text(encoding="utf-8"))
    report.write_report(report.COLLECTED, written)
    assert written.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8")


def test_the_studys_depth_answers_quote_only_numbers_of_the_depth_study_report():
    """docs/study.md's hand-written depth answers quote the depth study's tables."""
    heading = load_bench("study").DEPTH_ANSWERS
    section = (ROOT / "docs" / "study.md").read_text(encoding="utf-8").split(
        f"\n{heading}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    tables = DOC.read_text(encoding="utf-8").split("\n## Conclusions\n", 1)[1].split(
        "\n## ", 1)[1]
    assert_quotes_only(section, tables, at_least=20, message=(
        "docs/study.md's depth answers quote {number}, which docs/depth_study.md lacks"))


def test_the_3000_sentence_runs_get_their_own_table_and_conflict_rows(depth, report, tmp_path):
    """Per-exit UPGrad's shrunk 12-layer run is reported beside the references on the same
    sentences (and their 8,000-sentence runs), and its conflict map beside its 6-layer twin's;
    a configuration mapped at both sizes shows its 6-layer map once."""
    small = {run.config: run for run in depth.plan("depth12_small")}
    full = {run.config: run for run in depth.plan("depth12")}
    right = torch.ones(16, dtype=torch.bool)
    right[:3] = False  # 13 of 16
    write_finished(small["exit_upgrad"].folder(tmp_path), right)
    write_finished(full["deebert"].folder(tmp_path), torch.ones(16, dtype=torch.bool))
    # the upper third conflicts on every measured step, the lower on none (12 layers)
    lines = [json.dumps({"step": step, "cosine/encoder.layers.0/exit1/exit2": 0.3,
                         "conflict/encoder.layers.0/exit1/exit2": 0,
                         "cosine/encoder.layers.11/exit11/exit12": -0.2,
                         "conflict/encoder.layers.11/exit11/exit12": 1}) for step in (5, 10)]
    (small["exit_upgrad"].folder(tmp_path) / "train_log.jsonl").write_text("\n".join(lines))

    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line
            for line in report.small_section(tmp_path) if line.startswith("| ")}
    assert float(rows["exit_upgrad", "3,000 sentences"].split("|")[-2]) == 81.25
    assert float(rows["deebert", "8,000 sentences"].split("|")[-2]) == 100.0
    assert rows["deebert", "3,000 sentences"].count(" - ") == len(report.BUDGETS)
    assert ("exit_upgrad", "8,000 sentences") not in rows  # it never ran on all of them

    section = report.conflict_section(tmp_path)
    table = [line for line in section if line.startswith("| ") and line.count("|") == 7]
    assert "| exit_upgrad | 12 (3,000 sentences) | 1/2 | 0.0% | - | 100.0% |" in table
    assert [line.split("|")[2].strip() for line in table if line.startswith(
        "| romebert_sd |")] == ["6", "12", "12 (3,000 sentences)"]
    assert "### exit_upgrad, 12 layers, 3,000 sentences" in section
