"""Entry-point plugins: where each registered name came from, broken and clashing plugins as
one-line errors, `gradsurg plugins` (table and JSON), and recipes run by name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

import gradsurg.plugins
import gradsurg.recipes
import gradsurg.registry
from gradsurg.cli import app
from gradsurg.errors import ConfigError
from gradsurg.multiexit.adapters import ADAPTERS, BertAdapter
from gradsurg.recipes import RECIPES, load_recipe
from gradsurg.registry import Registry

runner = CliRunner()
DIGITS_FILE = (Path(__file__).resolve().parents[1] / "plugins" / "digits_multiexit" /
               "gradsurg_digits" / "recipes" / "digits_project.yaml")

BUILT_INS = {
    "combiners": {"sum", "mean", "pcgrad", "project", "merge", "cagrad", "gradvac", "mgda",
                  "imtlg", "upgrad", "dualproj", "aligned_mtl", "nash_mtl", "config", "fairgrad",
                  "graddrop", "rlw", "dbmtl", "moco", "pcd", "krum", "trimmed_mean",
                  "cr_mogm", "excess_mtl"},
    "loss_terms": {"final_task", "early_task_sum", "self_distillation", "layer_weighted",
                   "learned_exit_weights"},
    "loss_weightings": {"uncertainty", "dwa", "famo", "geometric", "imtll", "stch",
                        "layerskip", "eellm_warmup", "pbi", "cosmos"},
    "exit_policies": {"entropy", "normalized_entropy", "max_prob", "patience",
                      "confidence_window", "fixed"},
    "backbone_adapters": {"bert", "roberta", "mpnet", "albert"},
    "optimizers": {"adamw", "adam", "sgd", "rmsprop", "adagrad"},  # every torch.optim one
    "programs": {"multiexit_glue"},
    "recipes": set(),
}
# the in-tree plugins the test command installs (README, .ci/run)
INSTALLED = {
    "combiners": {"balanced_sum": "gradsurg-balanced"},
    "programs": {"digits_multiexit": "gradsurg-digits"},
    "recipes": {"digits_project": "gradsurg-digits"},
}


@dataclass
class FakeEntryPoint:
    """What the registry reads from an entry point: its name, its distribution, `load()`."""

    name: str
    value: str
    dist: Any = None
    loads: int = 0

    def load(self) -> Any:
        self.loads += 1
        return EntryPoint(self.name, self.value, "test").load()


def package(name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name)


@pytest.fixture
def installed(monkeypatch):
    """Pretend these entry points are installed: `installed({group: [FakeEntryPoint]})`.

    The real registries discover their entry points first, so none caches the fake ones.
    """
    for registry in gradsurg.plugins.REGISTRIES.values():
        registry.entries()

    def install(groups: dict[str, list[FakeEntryPoint]]) -> None:
        monkeypatch.setattr(gradsurg.registry, "entry_points",
                            lambda *, group: groups.get(group, []))

    return install


# ---- the registry ---------------------------------------------------------------------------


def test_sources_are_gradsurg_or_the_plugins_distribution(installed):
    plugin = FakeEntryPoint("dumps", "json:dumps", package("pkg-json"))
    installed({"test.group": [plugin]})
    registry: Registry[Any] = Registry("thing", "test.group")
    registry.add("loads", json.loads)
    assert registry.names() == ["dumps", "loads"]
    assert plugin.loads == 0  # listing names imports nothing
    assert [(e.name, e.source) for e in registry.entries()] == [("loads", "gradsurg"),
                                                                ("dumps", "pkg-json")]
    assert registry.get("dumps") is json.dumps and plugin.loads == 1
    assert registry.source("dumps") == "pkg-json" and registry.source("loads") == "gradsurg"
    assert "dumps" in registry and "nope" not in registry
    with pytest.raises(ConfigError, match=r"^unknown thing 'nope'; allowed: dumps, loads$"):
        registry.get("nope")


def test_an_entry_point_without_a_distribution_is_from_unknown(installed):
    installed({"test.group": [FakeEntryPoint("dumps", "json:dumps")]})
    registry: Registry[Any] = Registry("thing", "test.group")
    assert registry.source("dumps") == "unknown"


@pytest.mark.parametrize(("value", "problem"), [
    ("gradsurg_no_such_module:thing",
     "ModuleNotFoundError: No module named 'gradsurg_no_such_module'"),
    ("json:no_such_attribute", "AttributeError: module 'json' has no attribute"),
])
def test_a_broken_entry_point_is_one_line_naming_it_group_and_package(installed, value,
                                                                      problem):
    installed({"gradsurg.combiners": [FakeEntryPoint("foo", value, package("bar")),
                                      FakeEntryPoint("dumps", "json:dumps", package("ok"))]})
    registry: Registry[Any] = Registry("combiner", "gradsurg.combiners")
    with pytest.raises(ConfigError) as raised:
        registry.get("foo")
    message = str(raised.value)
    assert message.startswith("entry point 'foo' in group 'gradsurg.combiners' (package bar) "
                              f"failed to load: {problem}")
    assert "\n" not in message and raised.value.__cause__ is None
    assert raised.value.__suppress_context__
    assert registry.get("dumps") is json.dumps  # the other plugins still work
    assert "foo" in registry.names()


def test_two_packages_with_one_name_are_an_error_naming_both(installed):
    installed({"test.group": [FakeEntryPoint("x", "json:dumps", package("pkg-a")),
                              FakeEntryPoint("x", "json:loads", package("pkg-b"))]})
    with pytest.raises(ConfigError, match=r"^thing name 'x' is registered twice: by pkg-a and "
                                          r"by pkg-b; uninstall one of the packages$"):
        Registry("thing", "test.group").names()


def test_a_plugin_reusing_a_built_in_name_is_an_error_naming_both(installed):
    installed({"test.group": [FakeEntryPoint("sum", "json:dumps", package("pkg-a"))]})
    registry: Registry[Any] = Registry("combiner", "test.group")
    registry.add("sum", json.loads)
    with pytest.raises(ConfigError, match="'sum' is registered twice: by gradsurg and by pkg-a"):
        registry.get("sum")


def test_gradsurg_may_declare_its_built_ins_as_entry_points(installed):
    declared = FakeEntryPoint("loads", "json:loads", package("gradsurg"))
    installed({"test.group": [declared]})
    registry: Registry[Any] = Registry("thing", "test.group")
    registry.add("loads", json.loads)
    assert registry.get("loads") is json.loads and registry.names() == ["loads"]
    assert declared.loads == 0


def test_backbone_adapters_are_a_registry_of_model_types():
    assert isinstance(ADAPTERS, Registry) and ADAPTERS.group == "gradsurg.adapters"
    assert ADAPTERS.get("bert") is BertAdapter and ADAPTERS.source("bert") == "gradsurg"
    assert ADAPTERS.entries()[0].name == "bert"  # the order make_adapter's error lists
    with pytest.raises(ConfigError, match="unknown backbone adapter 'gpt2'; allowed: albert"):
        ADAPTERS.get("gpt2")


# ---- gradsurg plugins -----------------------------------------------------------------------


def test_plugins_lists_every_built_in_and_the_installed_plugins():
    result = runner.invoke(app, ["plugins"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for heading in ("combiners", "loss terms", "exit policies", "backbone adapters", "programs",
                    "recipes", "gradsurg.adapters", "gradsurg.recipes"):
        assert heading in result.output
    rows = {tuple(cell.strip() for cell in line.strip("│ ").split("│"))[:3]  # name..status
            for line in result.output.splitlines() if line.startswith("│")}
    for names in BUILT_INS.values():
        for name in names:
            assert (name, "gradsurg", "ok") in rows
    for plugins in INSTALLED.values():
        for name, source in plugins.items():
            assert (name, source, "ok") in rows
    assert runner.invoke(app, ["list"], env={"COLUMNS": "200"}).output == result.output


def test_plugins_json_has_every_kind_with_group_and_sources():
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert list(listing) == list(BUILT_INS)
    for kind, content in listing.items():
        assert content["group"] == gradsurg.plugins.REGISTRIES[kind].group
        sources = {entry["name"]: entry["source"] for entry in content["entries"]}
        assert all(entry["error"] is None for entry in content["entries"])
        assert {name: "gradsurg" for name in BUILT_INS[kind]}.items() <= sources.items()
        assert INSTALLED.get(kind, {}).items() <= sources.items()


def test_plugins_shows_a_broken_plugin_and_exits_2(installed, monkeypatch):
    installed({"gradsurg.combiners": [FakeEntryPoint("foo", "gradsurg_no_such_module:x",
                                                     package("bar"))]})
    monkeypatch.setitem(gradsurg.plugins.REGISTRIES, "combiners",
                        Registry("combiner", "gradsurg.combiners"))
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 2
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert error_lines == ["error: entry point 'foo' in group 'gradsurg.combiners' (package bar) "
                           "failed to load: ModuleNotFoundError: No module named "
                           "'gradsurg_no_such_module'"]
    assert "Traceback" not in result.output


# ---- recipes by name ------------------------------------------------------------------------


def test_a_registered_recipe_runs_by_name():
    assert RECIPES.source("digits_project") == "gradsurg-digits"
    program, config = load_recipe("digits_project", ["epochs=2"])
    assert program.name == "digits_multiexit" and config.epochs == 2
    result = runner.invoke(app, ["validate", "digits_project"])
    assert result.exit_code == 0 and "ok digits_project (digits_multiexit)" in result.output


def test_a_file_path_wins_over_a_registered_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("digits_project").write_text(DIGITS_FILE.read_text().replace("epochs: 10", "epochs: 7"))
    assert load_recipe("digits_project")[1].epochs == 7


def test_an_unknown_recipe_lists_the_registered_names():
    with pytest.raises(ConfigError, match=r"^recipe nope does not exist; allowed: a YAML file or "
                                          r"a registered recipe name: .*digits_project"):
        load_recipe("nope")
    result = runner.invoke(app, ["run", "nope"])
    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        f"error: recipe nope does not exist; allowed: a YAML file or a registered recipe name: "
        f"{', '.join(RECIPES.names())}"]


@pytest.mark.parametrize(("value", "problem"), [
    ("json:dumps", r"'bad' \(package pkg\): the entry point must give a path to a YAML file, "
                   "got function"),
    ("os:devnull", r"'bad' \(package pkg\) points to /dev/null, which does not exist"),
    ("gradsurg_no_such_module:x", r"entry point 'bad' in group 'gradsurg.recipes' \(package "
                                  r"pkg\) failed to load"),
])
def test_a_broken_recipe_entry_point_is_one_line(installed, monkeypatch, value, problem):
    installed({"gradsurg.recipes": [FakeEntryPoint("bad", value, package("pkg"))]})
    monkeypatch.setattr(gradsurg.recipes, "RECIPES", Registry("recipe", "gradsurg.recipes"))
    with pytest.raises(ConfigError, match=problem):
        load_recipe("bad")
