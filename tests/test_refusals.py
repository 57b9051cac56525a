"""No wrong run may look like a right one. Each class of bad input or fault is one
parametrized test through the real command line: exit code 2, one `error:` line naming the
culprit, no traceback, nothing half-written. The cases here need no training; the ones that
do are in test_faults.py. README's "What gradsurg refuses" table counts both."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
from cli_runs import ROMEBERT_RECIPE, invoke, one_line_error
from pydantic import BaseModel

from gradsurg.programs import PROGRAMS

# --- every float key of every recipe schema refuses non-finite numbers -----------------------

def float_keys(config_cls: type, prefix: str = "") -> dict[str, object]:
    """Dotted keys whose type admits a float (float, float | None, list[float], ...), nested
    schemas (`optimizer.lr`) included, with their types."""
    def has_float(annotation: object) -> bool:
        return annotation is float or any(has_float(a) for a in typing.get_args(annotation))
    found: dict[str, object] = {}
    for name, info in config_cls.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found.update(float_keys(info.annotation, f"{prefix}{name}."))
        elif has_float(info.annotation):
            found[prefix + name] = info.annotation
    return found


def schema_cases() -> list[tuple[str, str, str]]:
    recipes = {"multiexit_glue": ROMEBERT_RECIPE, "digits_multiexit": "digits_project"}
    cases = []
    for program in sorted(recipes):
        config_cls = PROGRAMS.get(program).config
        for key, annotation in float_keys(config_cls).items():
            kind = typing.get_origin(annotation)
            for value in (".inf", "-.inf", ".nan"):
                raw = f"[{value}]" if kind is list else value
                cases.append((recipes[program], f"{key}={raw}", key))
    return cases


SCHEMA_CASES = schema_cases()
NESTED_CASES = [  # float parameters inside combiner, exit policy and loss term mappings
    ("combiner={name: cagrad, c: .inf}", "combiner.c"),
    ("combiner={name: gradvac, beta: .nan}", "combiner.beta"),
    ("exit_policy={name: entropy, threshold: .inf}", "exit_policy.threshold"),
    ("exit_policy={name: patience, tolerance: .nan}", "exit_policy.tolerance"),
    ("exit_policy={name: confidence_window, margin: -.inf}", "exit_policy.margin"),
    ("loss_groups={final: final_task, sd: {name: self_distillation, gamma: .nan}}",
     "loss_groups.sd.gamma"),
    ("loss_groups={final: final_task, sd: {name: self_distillation, temperature: .inf}}",
     "loss_groups.sd.temperature"),
    ("optimizer={name: adam, eps: .nan}", "optimizer.eps"),
]


def test_the_float_keys_are_found():
    """The introspection finds the schema's float keys (so the next test cannot pass empty)."""
    assert {"optimizer.lr", "epochs", "gamma", "temperature", "dropout", "sweep",
            "max_grad_norm", "scheduler.warmup_ratio", "optimizer.weight_decay",
            "backbone_dropout"} <= set(
        float_keys(PROGRAMS.get("multiexit_glue").config))
    assert float_keys(PROGRAMS.get("digits_multiexit").config)


@pytest.mark.parametrize(("recipe", "override", "key"), SCHEMA_CASES,
                         ids=[f"{Path(r).stem}-{o}" for r, o, _ in SCHEMA_CASES])
def test_non_finite_numbers_are_refused_in_every_float_key(recipe, override, key):
    one_line_error(["validate", recipe, "--set", override], f"'{key}")


@pytest.mark.parametrize(("override", "key"), NESTED_CASES, ids=[k for _, k in NESTED_CASES])
def test_non_finite_numbers_are_refused_inside_nested_parameters(override, key):
    one_line_error(["validate", ROMEBERT_RECIPE, "--set", override], f"'{key}'")


CLI_FLOAT_OPTIONS = [
    ["--threshold", "inf"], ["--threshold", "nan"], ["--policy", "patience", "--tolerance", "inf"],
    ["--policy", "confidence_window", "--margin", "nan"], ["--param", "threshold=.inf"],
]


@pytest.mark.parametrize("command", ["predict", "eval"])
@pytest.mark.parametrize("options", CLI_FLOAT_OPTIONS, ids=[" ".join(o) for o in CLI_FLOAT_OPTIONS])
def test_non_finite_policy_options_are_refused(command, options, tmp_path):
    one_line_error([command, tmp_path, *options], "is not allowed")


# --- recipe values that used to end in a traceback, or only fail after training -----------

VALUE_CASES = [
    (["seed=-1"], "key 'seed'"),
    (["seed=9223372036854775808"], "key 'seed'"),  # 2**63: outside 0..2**63-1
    (["seed=18446744073709551616"], "key 'seed'"),  # 2**64
    (["combiner={name: pcgrad, seed: x}"], "combiner 'pcgrad': seed must be an integer"),
    (["combiner={name: pcgrad, seed: 1.5}"], "combiner 'pcgrad': seed must be an integer"),
    (["combiner={name: pcgrad, seed: [1]}"], "combiner 'pcgrad': seed must be an integer"),
    (["combiner={name: pcgrad, seed: 18446744073709551616}"], "combiner (combiner 'pcgrad')"),
    (["combiner={name: gradvac, seed: x}"], "seed must be an integer"),
    (["sweep=[]"], "key 'sweep': an empty list"),
    (["sweep=[-1]"], "key 'sweep': value -1"),
    (["sweep=[0.5, 2, -0.1]"], "value -0.1"),
    (["exit_policy=max_prob", "sweep=[1.5]"], "value 1.5"),
    (["exit_policy=patience", "sweep=[0]"], "value 0"),
    (["exit_policy=patience", "sweep=[2.5]"], "value 2.5"),
    (["exit_policy=fixed", "sweep=[0]"], "value 0"),
    (["include=[]"], "key 'include': an empty list"),
    (["program=5"], "key 'program': expected a program name, got int"),
    (["program=[multiexit_glue]"], "key 'program': expected a program name, got list"),
    (["program=null"], "key 'program': expected a program name, got NoneType"),
    (["combiner={name: pcgrad, name: sum}"], "duplicate key 'name'"),
]


@pytest.mark.parametrize(("overrides", "message"), VALUE_CASES,
                         ids=[" ".join(o) for o, _ in VALUE_CASES])
def test_bad_values_are_refused_at_validation(overrides, message, tmp_path):
    args = ["run", ROMEBERT_RECIPE, "--output", tmp_path / "out"]
    for item in overrides:
        args += ["--set", item]
    one_line_error(args, message)
    assert not (tmp_path / "out").exists()


# --- recipe files --------------------------------------------------------------------------

RECIPE_FILES = {
    "duplicate top-level key": (b"program: multiexit_glue\nepochs: 1\nepochs: 2\n",
                                "dup.yaml:3: invalid YAML: duplicate key 'epochs'"),
    "duplicate nested key": (b"program: multiexit_glue\ncombiner:\n  name: pcgrad\n  seed: 1\n"
                             b"  seed: 2\n", "dup.yaml:5: invalid YAML: duplicate key 'seed'"),
    "non-UTF-8 byte": (b"program: multiexit_glue\nmode: romebert # caf\xe9\n", "not UTF-8"),
    "program: 5": (b"program: 5\n", "key 'program': expected a program name, got int 5"),
    "empty file": (b"", "a recipe must be a mapping"),
    "infinite number": (b"program: multiexit_glue\nepochs: .inf\n", "key 'epochs'"),
}


@pytest.mark.parametrize("case", sorted(RECIPE_FILES))
def test_bad_recipe_files_are_refused(case, tmp_path):
    content, message = RECIPE_FILES[case]
    recipe = tmp_path / "dup.yaml"
    recipe.write_bytes(content)
    for command in ("run", "validate"):
        one_line_error([command, recipe, *(["--output", tmp_path / "o"] if command == "run"
                                           else [])], message)
    assert not (tmp_path / "o").exists()


def test_yaml_merge_keys_still_override():
    """`<<: *base` then a key is YAML's documented override, not a duplicate."""
    from gradsurg import strict_yaml

    assert strict_yaml.load("b: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n")["c"] == {"x": 3, "y": 2}


def test_a_recipe_path_that_is_a_folder_is_named_as_such(tmp_path):
    one_line_error(["run", tmp_path], "is a directory")
    one_line_error(["validate", tmp_path], "is a directory")


# --- output paths of `run`, checked before anything is written ------------------------------

def output_cases(tmp_path: Path) -> list[tuple[str, str]]:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return [
        ("", "--output '' is empty"),
        ("  ", "is empty"),
        (str(a_file), "is an existing file"),
        (str(tmp_path / ("n" * 300)), "longer than the file system allows"),
        (str(tmp_path / ("n" * 300) / "run"), "longer than the file system allows"),
        (str(a_file / "run"), "a_file"),  # a file where a folder should be: ENOTDIR
        # A read-only file system (sysfs takes no new folders, even from root; plain chmod
        # would not stop root, which the tests may run as).
        ("/sys/gradsurg-test/run", "/sys/gradsurg-test"),
    ]


def test_bad_output_folders_for_run(tmp_path, shared_glue_dir):
    for output, message in output_cases(tmp_path):
        if output.startswith("/sys/") and not Path("/sys/kernel").is_dir():
            continue  # no sysfs on this system
        one_line_error(["run", ROMEBERT_RECIPE, "--output", output, "--set", "train_rows=8"],
                       message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# --- predict and eval: model folders, inputs, outputs --------------------------------------

def model_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def test_the_saved_model_files_are_the_ones_checked(saved_model):
    """Every file save_pretrained writes is covered by the next test (none silently optional)."""
    assert model_files(saved_model) == ["config.json", "gradsurg_config.json",
                                        "model.safetensors", "tokenizer.json",
                                        "tokenizer_config.json"]


@pytest.mark.parametrize("damage", ["missing", "empty"])
@pytest.mark.parametrize("name", ["config.json", "gradsurg_config.json", "model.safetensors",
                                  "tokenizer.json", "tokenizer_config.json"])
@pytest.mark.parametrize("command", ["predict", "eval"])
def test_a_model_folder_missing_a_file_is_refused_before_loading(
        command, name, damage, saved_model, tmp_path):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(saved_model, broken)
    if damage == "missing":
        (broken / name).unlink()
    else:
        (broken / name).write_bytes(b"")
    expected = "tokenizer vocabulary" if name == "tokenizer.json" and damage == "missing" \
        else name
    one_line_error([command, broken], expected, stdin="a fine film\n")


@pytest.mark.parametrize(("content", "message"), [
    ("{}", "gradsurg_config.json: multi-exit config key 'num_labels' is missing"),
    ("[]", "gradsurg_config.json"),
    ('{"num_labels": 2, "colour": 1}', "gradsurg_config.json: multi-exit config key 'colour'"),
    ("{not json", "gradsurg_config.json: not valid JSON"),
])
def test_a_bad_gradsurg_config_is_named(content, message, saved_model, tmp_path):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(saved_model, broken)
    (broken / "gradsurg_config.json").write_text(content)
    one_line_error(["predict", broken], message, stdin="a fine film\n")


def input_cases(tmp_path: Path) -> list[tuple[list[str], str | bytes | None, str]]:
    bad_late = tmp_path / "late.txt"
    bad_late.write_bytes(b"a fine film\n" * 40 + b"caf\xe9\n")
    listed = tmp_path / "listed"  # no extension: the format is sniffed from the first line
    listed.write_text('["a fine film", "a bad one"]\n')
    listed_jsonl = tmp_path / "listed.jsonl"
    listed_jsonl.write_text('["a fine film", "a bad one"]\n')
    return [
        (["-i", bad_late], None, "late.txt:41: not UTF-8"),
        (["-i", bad_late, "--batch-size", "1"], None, "late.txt:41: not UTF-8"),
        ([], b"a fine film\ncaf\xe9\n", "<stdin>:2: not UTF-8"),
        ([], b"\xff\xfe\n", "<stdin>:1: not UTF-8"),
        ([], '["a fine film"]\n', "<stdin>:1: expected a JSON object, got list"),
        (["-i", listed], None, "listed:1: expected a JSON object, got list"),
        (["-i", listed_jsonl], None, "listed.jsonl:1: expected a JSON object, got list"),
        (["-i", tmp_path], None, "is a folder"),
        (["--max-length", "100000"], "a fine film\n", "--max-length: 100000"),
        (["--max-length", "513"], "a fine film\n", "--max-length: 513"),
        (["-o", tmp_path / "nodir" / "out.jsonl"], "a fine film\n", "nodir"),
        (["-o", tmp_path], "a fine film\n", "is a folder"),
    ]


def test_bad_predict_inputs_are_refused_before_any_prediction(saved_model, tmp_path):
    for extra, stdin, message in input_cases(tmp_path):
        output = one_line_error(["predict", saved_model, *extra], message, stdin=stdin)
        assert '"line"' not in output  # not one prediction was printed


def test_a_failed_predict_leaves_the_output_file_as_it_was(saved_model, tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("earlier predictions\n")
    late = tmp_path / "late.txt"
    late.write_bytes(b"a fine film\n" * 40 + b"caf\xe9\n")
    for extra, message in [(["-i", late], "late.txt:41"),
                           (["-i", tmp_path / "none.txt"], "none.txt"),
                           (["-i", late, "--policy", "nope"], "unknown exit policy"),
                           (["-i", late, "--max-length", "9999"], "--max-length")]:
        one_line_error(["predict", saved_model, "-o", target, *extra], message)
        assert target.read_text() == "earlier predictions\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["late.txt", "out.jsonl"]
    good = tmp_path / "good.txt"
    good.write_text("a fine film\nthe plot is a mess\n")
    result = invoke("predict", saved_model, "-i", good, "-o", target)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["line"] for line in target.read_text().splitlines()] == [1, 2]


def test_predict_into_a_full_device_is_one_error_line(saved_model):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    one_line_error(["predict", saved_model, "-o", "/dev/full"], "/dev/full: No space left",
                   stdin="a fine film\n")
    assert Path("/dev/full").is_char_device()  # written to, never replaced


def test_eval_checks_its_json_target_before_evaluating(saved_model, tmp_path):
    one_line_error(["eval", saved_model, "--json", tmp_path / "nodir" / "x.json"], "nodir")
    one_line_error(["eval", saved_model, "--json", tmp_path], "is a folder")
    one_line_error(["eval", saved_model, "--max-length", "100000"], "--max-length")


def path_argument_cases(tmp_path: Path, model: Path) -> list[tuple[list[object], str]]:
    """Every path a command takes, pointed at something missing or of the wrong kind."""
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("a fine film\n")
    missing = tmp_path / "missing"
    return [
        (["run", missing / "r.yaml"], "r.yaml does not exist"),
        (["validate", tmp_path], "is a directory"),
        (["predict", missing], "missing"),
        (["predict", a_file], "a_file.txt' is a file"),
        (["predict", model, "-i", missing / "in.txt"], "in.txt"),
        (["predict", model, "-i", tmp_path], "is a folder"),
        (["predict", model, "-i", a_file, "-o", missing / "out.jsonl"], "missing"),
        (["predict", model, "-i", a_file, "-o", tmp_path], "is a folder"),
        (["eval", missing], "missing"),
        (["eval", a_file], "a_file.txt' is a file"),
        (["eval", model, "--data-dir", missing], "missing"),
        (["eval", model, "--json", missing / "x.json"], "missing"),
        (["eval", model, "--json", tmp_path], "is a folder"),
    ]


def test_every_path_argument_names_the_path(saved_model, tmp_path):
    for args, message in path_argument_cases(tmp_path, saved_model):
        one_line_error(args, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file.txt"]  # nothing written
