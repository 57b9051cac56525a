"""Combiner options: every built-in combiner's bad options in one table (each a ConfigError
naming the combiner and the option), options reaching the combiner by name, nested specs, and
groups named in options checked when the combiner is bound. Refusals particular to one
combiner's groups stay with it (test_pcd.py, test_robust_combiners.py, test_cr_mogm.py,
test_blockwise.py)."""

from __future__ import annotations

import math

import pytest
import torch

from gradsurg.combiners import COMBINERS, Mean, Merge, Project
from gradsurg.errors import ConfigError

#: (spec, what the error must say), every built-in combiner's refusals of a bad option.
BAD_OPTIONS = [
    # names and nesting
    ("pcgard", r"unknown combiner 'pcgard'; allowed: .*pcgrad"),
    ({"name": "project", "reference": "sd"}, r"combiner \(combiner 'project'\).*target"),
    ({"name": "merge", "groups": ["a"], "into": "x", "then": "sum",
      "inner": {"name": "project", "target": "a", "reference": "b", "x": 1}},
     r"combiner\.inner \(combiner 'project'\)"),
    # cagrad, gradvac, mgda, upgrad, imtlg
    ({"name": "cagrad", "c": -1}, r"'cagrad': c must be a finite number >= 0, got -1"),
    ({"name": "cagrad", "c": float("nan")}, r"'cagrad': c must"),
    ({"name": "cagrad", "c": "big"}, r"'cagrad': c must"),
    ({"name": "gradvac", "beta": 1.5}, r"'gradvac': beta must be a number in \[0, 1\]"),
    ({"name": "gradvac", "beta": -0.1}, r"'gradvac': beta must"),
    ({"name": "gradvac", "seed": 1.5}, r"'gradvac': seed must be an integer"),
    ({"name": "mgda", "max_iters": 3}, r"combiner \(combiner 'mgda'\).*max_iters"),
    ({"name": "upgrad", "c": 1}, r"combiner \(combiner 'upgrad'\).*'c'"),
    ({"name": "imtlg", "beta": 1}, r"combiner \(combiner 'imtlg'\).*'beta'"),
    # fairgrad, dbmtl, moco, nash_mtl, graddrop, rlw, dualproj, aligned_mtl, config
    ({"name": "fairgrad", "alpha": 0}, r"'fairgrad': alpha must be a finite number > 0, got 0"),
    ({"name": "fairgrad", "alpha": math.inf}, r"'fairgrad': alpha must"),
    ({"name": "dbmtl", "beta": 1.0}, r"'dbmtl': beta must be a number in \[0, 1\)"),
    ({"name": "moco", "beta": 0}, r"'moco': beta must be a number in \(0, 1\]"),
    ({"name": "moco", "gamma": -1}, r"'moco': gamma must be a finite number > 0"),
    ({"name": "moco", "rho": "x"}, r"'moco': rho must be a finite number >= 0"),
    ({"name": "nash_mtl", "update_every": 0}, r"'nash_mtl': update_every must be an integer"),
    ({"name": "graddrop", "seed": 1.5}, r"'graddrop': seed must be an integer"),
    ({"name": "rlw", "seed": True}, r"'rlw': seed must be an integer"),
    ({"name": "dualproj", "c": 1}, r"combiner \(combiner 'dualproj'\).*'c'"),
    ({"name": "aligned_mtl", "scale_mode": "min"}, r"combiner \(combiner 'aligned_mtl'\)"),
    ({"name": "config", "weights": [1]}, r"combiner \(combiner 'config'\)"),
    # pcd
    ({"name": "pcd", "tau": 1.5}, r"'pcd': tau must be a number in \[0, 1\]"),
    ({"name": "pcd", "tau": {"sd": -0.1}}, r"'pcd': tau\['sd'\] must be a number in \[0, 1\]"),
    ({"name": "pcd", "beta": 1.0}, r"'pcd': beta must be a number in \[0, 1\)"),
    ({"name": "pcd", "eps": -1}, r"'pcd': eps must be a number >= 0"),
    ({"name": "pcd", "primary": 3}, r"'pcd': primary must be a loss group name"),
    ({"name": "pcd", "primary": "sd", "tau": {"sd": 0.1}}, r"tau names the primary group"),
    # krum, trimmed_mean
    ({"name": "krum", "n_byzantine": -1}, r"'krum': n_byzantine must be an integer >= 0"),
    ({"name": "krum", "n_selected": 0}, r"'krum': n_selected must be an integer >= 1"),
    ({"name": "krum", "squared": "yes"}, r"'krum': squared must be true or false"),
    ({"name": "trimmed_mean", "trim": 1.5}, r"'trimmed_mean': trim must be an integer >= 0"),
    # cr_mogm
    ({"name": "cr_mogm", "inner": "graddrop"}, r"inner 'graddrop' does not pick row weights"),
    ({"name": "cr_mogm", "alpha": 1.5}, r"'cr_mogm': alpha must be a number in \[0, 1\]"),
    ({"name": "cr_mogm", "inner": "upgard"}, r"combiner\.inner: unknown combiner 'upgard'"),
    ({"name": "cr_mogm", "initial": [1, 2]}, r"'cr_mogm': initial must be a \{group: weight\}"),
    # excess_mtl
    ({"name": "excess_mtl", "eta": 0}, r"'excess_mtl': eta must be a finite number > 0"),
    ({"name": "excess_mtl", "warmup_steps": -1},
     r"'excess_mtl': warmup_steps must be an integer"),
    # sdmgrad, modo
    ({"name": "sdmgrad", "lr": 0}, r"'sdmgrad': lr must be a finite number > 0, got 0"),
    ({"name": "sdmgrad", "momentum": 1.0}, r"'sdmgrad': momentum must be a number in \[0, 1\)"),
    ({"name": "sdmgrad", "n_iter": 2.0}, r"'sdmgrad': n_iter must be an integer >= 1"),
    ({"name": "sdmgrad", "lam": -0.1}, r"'sdmgrad': lam must be a finite number >= 0"),
    ({"name": "sdmgrad", "preference": {"a": 0, "b": 0}},
     r"'sdmgrad': preference must be a \{group: weight\} mapping with weights >= 0, not all 0"),
    ({"name": "sdmgrad", "preference": [0.5, 0.5]}, r"'sdmgrad': preference must be"),
    ({"name": "sdmgrad", "lambda_": 0.3}, r"combiner \(combiner 'sdmgrad'\).*'lambda_'"),
    ({"name": "modo", "gamma": 0}, r"'modo': gamma must be a finite number > 0, got 0"),
    ({"name": "modo", "rho": -1}, r"'modo': rho must be a finite number >= 0, got -1"),
]


@pytest.mark.parametrize(("spec", "pattern"), BAD_OPTIONS)
def test_bad_options_are_config_errors_naming_the_option(spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        COMBINERS.build(spec, where="combiner")


@pytest.mark.parametrize(("spec", "expected"), [
    ({"name": "gradvac", "beta": 0.1, "seed": 3}, {"beta": 0.1, "seed": 3}),
    ({"name": "cagrad", "c": 0.2}, {"c": 0.2}),
    ({"name": "fairgrad", "alpha": 0.5}, {"alpha": 0.5}),
    ({"name": "moco", "gamma": 0.3}, {"gamma": 0.3}),
    ({"name": "nash_mtl", "update_every": 4}, {"update_every": 4}),
    ({"name": "sdmgrad", "lr": 2.0, "momentum": 0.0, "n_iter": 3, "lam": 1.0},
     {"lr": 2.0, "momentum": 0.0, "n_iter": 3, "lam": 1.0}),
    ({"name": "modo", "gamma": 0.2, "rho": 0.0}, {"gamma": 0.2, "rho": 0.0}),
])
def test_options_reach_the_combiner_by_name(spec, expected):
    combiner = COMBINERS.build(spec, where="combiner")
    assert {key: getattr(combiner, key) for key in expected} == expected


def test_sdmgrad_preference_must_name_every_group_and_no_other():
    combiner = COMBINERS.build({"name": "sdmgrad", "preference": {"a": 1, "b": 1}},
                               where="combiner")
    assert combiner.group_names() == ["a", "b"]  # checked against a recipe's groups
    with pytest.raises(ConfigError, match=r"preference must give a weight to each loss group "
                                          r"\['a', 'b', 'c'\] and to no other; missing \['c'\]"):
        combiner(torch.ones(9, 2), ["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"\['b'\] are not among them"):
        combiner(torch.ones(3, 2), ["a"])


def test_combiners_build_nested_specs():
    combiner = COMBINERS.build({
        "name": "merge",
        "groups": ["final", "sd"],
        "inner": {"name": "project", "target": "final", "reference": "sd"},
        "into": "main",
        "then": "mean",
    }, where="combiner")
    assert isinstance(combiner, Merge)
    assert isinstance(combiner.inner, Project) and isinstance(combiner.then, Mean)
    assert combiner.bind(["final", "sd", "aux"]).linear_weights() is None
    linear = COMBINERS.build({"name": "merge", "groups": ["a", "b"], "inner": "sum",
                             "into": "ab", "then": "mean"}, where="combiner")
    assert linear.bind(["a", "b", "c"]).linear_weights() == [0.5, 0.5, 0.5]


def test_project_names_a_missing_group():
    with pytest.raises(ConfigError, match="reference group 'sd'"):
        Project(target="final", reference="sd")(torch.ones(2, 3), ["final", "other"])
