"""How exact the QP-based combiners are on hard inputs: worst errors over many seeds.

    python bench/hard_inputs.py [--seeds 300] [--out bench/results/hard_inputs.json]

tests/test_hard_inputs.py asserts bounds on a few random inputs of each kind per CI run; this
script measures the worst cases over `--seeds` inputs per kind (the same generators and the
same cvxpy references), which README's "Exactness on hard inputs" quotes. All numbers are
relative to sum_i ||g_i|| (squared for objectives; for `pcd`, to k on its unit rows):

    order       ||out(rows) - out(shuffled rows)||
    infeasible  the worst constraint violation (`cagrad`: how far outside its ball)
    gap         objective of ours minus cvxpy's (< 0: ours is the better point)
    distance    ||ours - cvxpy's point|| (meaningful only where the problem is well posed)
    unsolved    inputs where Clarabel reported no accurate optimum (skipped for gap/distance)

`pcd`'s gap and distance are relative to (k + ||d||)^2 and k + ||d||, d its QP's point on the
unit rows; `declared_infeasible_cvxpy_step_min` is minus the shortest ||d|| cvxpy found where
pcd declared the constraints infeasible (none such: absent).

About a minute per 100 seeds on two CPU cores. Writes bench/results/hard_inputs.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cvxpy as cp
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_hard_inputs as hard  # noqa: E402  (the generators and references the tests use)

from gradsurg.combiners import MGDA, PCD, CAGrad, DualProj, UPGrad  # noqa: E402
from gradsurg.combiners.pcd import priority_qp  # noqa: E402


class Worst:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.unsolved = 0

    def add(self, name: str, value: float) -> None:
        self.values[name] = max(self.values.get(name, -np.inf), float(value))


def measure(kind: str, seed: int, worst: dict[str, Worst]) -> None:
    m = hard.hard_matrix(seed, kind)
    k, n = m.shape
    scale = np.linalg.norm(m, axis=1).sum()
    size = np.linalg.norm(m, axis=1).max()
    unit = hard.units(m)

    def projection_facts(name: str, ours: np.ndarray, point: np.ndarray) -> None:
        reference = hard.cone_projection(m, point)
        if reference is None:
            worst[name].unsolved += 1
            return
        worst[name].add("infeasible", -(unit @ ours).min() / scale)
        worst[name].add("gap", (np.sum((ours - point) ** 2)
                                - np.sum((reference - point) ** 2)) / scale**2)
        worst[name].add("distance", np.linalg.norm(ours - reference) / scale)

    out, again = hard.shuffled_output(UPGrad, m, seed)
    worst["upgrad"].add("order", np.linalg.norm(out - again) / scale)
    for i, g in enumerate(m):
        projection_facts("upgrad", hard.single_projection(m, i), g)

    out, again = hard.shuffled_output(DualProj, m, seed)
    worst["dualproj"].add("order", np.linalg.norm(out - again) / scale)
    projection_facts("dualproj", out, m.sum(0))

    out, again = hard.shuffled_output(MGDA, m, seed)
    worst["mgda"].add("order", np.linalg.norm(out - again) / scale)
    w = cp.Variable(k)
    if hard.solved(cp.Problem(cp.Minimize(cp.sum_squares((m / size).T @ w)),
                              [w >= 0, cp.sum(w) == 1])):
        reference = k * (w.value @ m)
        worst["mgda"].add("gap", (np.sum(out**2) - np.sum(reference**2)) / (k * scale) ** 2)
        worst["mgda"].add("distance", np.linalg.norm(out - reference) / (k * scale))
    else:
        worst["mgda"].unsolved += 1

    out, again = hard.shuffled_output(lambda: CAGrad(c=0.5), m, seed)
    worst["cagrad"].add("order", np.linalg.norm(out - again) / scale)
    mean = m.mean(0)
    radius = 0.5 * np.linalg.norm(mean)
    d, value = cp.Variable(n), cp.Variable()
    if hard.solved(cp.Problem(cp.Maximize(value), [(m / size) @ d >= value,
                                                   cp.norm(d - mean / size) <= radius / size])):
        ours = out / k
        worst["cagrad"].add("infeasible", (np.linalg.norm(ours - mean) - radius) / scale)
        worst["cagrad"].add("gap", (value.value * size**2 - (m @ ours).min()) / scale**2)
        worst["cagrad"].add("distance", np.linalg.norm(ours - d.value * size) / scale)
    else:
        worst["cagrad"].unsolved += 1

    tau = (0.0, 0.1, 0.5)[seed % 3]
    out, again = hard.shuffled_output(lambda: PCD(primary="g0", tau=tau, eps=0.0), m, seed)
    worst["pcd"].add("order", np.linalg.norm(out - again) / scale)
    mu, feasible, _ = priority_qp(torch.from_numpy(unit @ unit.T),
                                  torch.full((k - 1,), tau, dtype=torch.float64))
    direction = unit[0] + mu.numpy() @ unit[1:]
    if feasible:
        worst["pcd"].add("infeasible", -(unit[1:] @ direction - tau).min() / k)
    x = cp.Variable(n)
    if hard.solved(cp.Problem(cp.Minimize(cp.sum_squares(x - unit[0])), [unit[1:] @ x >= tau])):
        size = float(np.linalg.norm(x.value))
        if not feasible:  # declared infeasible: how short was cvxpy's point at least?
            worst["pcd"].add("declared_infeasible_cvxpy_step_min", -size)
            return
        worst["pcd"].add("gap", (np.sum((direction - unit[0]) ** 2)
                                 - np.sum((x.value - unit[0]) ** 2)) / (k + size) ** 2)
        worst["pcd"].add("distance", np.linalg.norm(direction - x.value) / (k + size))
    else:
        worst["pcd"].unsolved += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/hard_inputs.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for kind in hard.KINDS:
        worst = {name: Worst() for name in ("upgrad", "dualproj", "mgda", "cagrad", "pcd")}
        conditions = []
        for seed in range(10_000, 10_000 + args.seeds):
            measure(kind, seed, worst)
            m = hard.hard_matrix(seed, kind)
            conditions.append(float(np.linalg.cond(m @ m.T)))
        results[kind] = {name: {**w.values, "unsolved": w.unsolved} for name, w in worst.items()}
        results[kind]["gramian_condition"] = {"min": min(conditions),
                                              "median": float(np.median(conditions))}
        for name, facts in results[kind].items():
            print(kind, name, {key: f"{value:.1e}" for key, value in facts.items()}, flush=True)
    args.out.write_text(json.dumps({"seeds_per_kind": args.seeds, "results": results},
                                   indent=1) + "\n")


if __name__ == "__main__":
    main()
