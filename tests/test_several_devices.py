"""Several devices: DDP and FSDP2 in the user's own loop, Trainer, Lightning and Accelerate on
two gloo processes equal one process on the same global batches.

One `torchrun --nproc_per_node=2` launch runs every case of `several_devices_cases.py` (the
shared launcher: one start-up for all of them); the one-process references run here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import several_devices_cases as cases
import torch

from gradsurg.combiners import COMBINERS

pytestmark = pytest.mark.slow  # every test here is a whole run or launches processes

HERE = Path(__file__).resolve().parent
SPECS = cases.combiner_specs()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """Both ranks' results of every case, from one torchrun launch (bounded in time)."""
    out = tmp_path_factory.mktemp("several_devices")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(HERE / "several_devices_cases.py"), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=420, env=env,
                            cwd=out)
    files = [out / f"rank{rank}.pt" for rank in (0, 1)]
    if not all(f.is_file() for f in files):
        pytest.fail(f"torchrun exited {result.returncode}:\n{result.stderr[-4000:]}")
    # torch 2.13's gloo sometimes aborts a worker at interpreter exit, after both ranks wrote
    # their results and closed the process group: the results are complete then.
    return [torch.load(f, weights_only=False) for f in files]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_ddp_wrapped_model_equals_one_process(name, two_ranks):
    """`Surgery(DistributedDataParallel(model), ...)`: every combiner, accumulation, clipping."""
    got = two_ranks[0][f"ddp/{name}"]
    assert isinstance(got, torch.Tensor), got
    reference = cases.own_loop(SPECS[name], "none")
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-6)
    assert torch.equal(two_ranks[1][f"ddp/{name}"], got)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fsdp2_model_equals_one_process_or_is_refused_by_name(name, two_ranks):
    """`fully_shard` per block and root: exact on shards, or one line naming why not."""
    got = two_ranks[0][f"fsdp2/{name}"]
    if COMBINERS.get(name).exact_on_shards:
        assert isinstance(got, torch.Tensor), got
        reference = cases.own_loop(SPECS[name], "none")
        torch.testing.assert_close(got, reference, rtol=0, atol=1e-5)
        assert torch.equal(two_ranks[1][f"fsdp2/{name}"], got)
    else:
        assert isinstance(got, str)
        assert got.startswith(f"ConfigError: combiner {name!r} cannot run under FSDP2: ")
        assert "\n" not in got and "DDP" in got


@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_block_cosines_on_two_ranks_equal_one_process(engine, two_ranks):
    """`conflict_blocks`: under DDP from the all-reduced rows, under FSDP2 from the ranks'
    block Gramians all-reduced (a block's columns are its parameters' shards)."""
    got = two_ranks[0][f"block_conflicts/{engine}"]
    assert isinstance(got, dict), got
    reference = cases.block_conflicts("none")
    assert isinstance(reference, dict) and len(reference) == 18  # 3 layers x 3 pairs x 2
    assert sorted(got) == sorted(reference)
    for key, value in reference.items():
        assert got[key] == pytest.approx(value, abs=1e-5), key
    assert two_ranks[1][f"block_conflicts/{engine}"] == got


def test_some_combiners_run_sharded_and_every_refusal_says_why():
    sharded = [name for name in SPECS if COMBINERS.get(name).exact_on_shards]
    refused = sorted(set(SPECS) - set(sharded))
    assert {"sum", "project", "pcgrad", "upgrad", "mgda"} <= set(sharded)
    assert refused == ["blockwise", "dbmtl", "excess_mtl", "graddrop", "merge", "moco"]
    reasons = {COMBINERS.get(name).shard_refusal for name in refused}
    assert len(reasons) == len(refused)  # each its own reason, not the generic one


def test_fsdp2_rows_hold_this_ranks_shard_only(two_ranks):
    """Memory per rank: k rows of this rank's shard, not of the whole model."""
    shapes = [ranks["fsdp2_memory"].tolist() for ranks in two_ranks]
    for k, row_numel, local_numel, total in shapes:
        assert k == 3 and row_numel == local_numel < total
    assert sum(local for _, _, local, _ in shapes) == shapes[0][3]


def test_forward_through_a_ddp_wrapper_surgery_was_not_given_is_one_line_with_the_fix(
        two_ranks):
    message = two_ranks[0]["unwrapped_ddp"]
    assert message.startswith("GradsurgError: the model's forward ran through a "
                              "DistributedDataParallel wrapper")
    assert "Surgery(ddp_model" in message and "\n" not in message


@pytest.mark.parametrize("name", sorted(cases.INTEGRATIONS))
def test_integration_on_two_processes_equals_one(name, two_ranks, tmp_path):
    got = two_ranks[0][name]
    reference = cases.INTEGRATIONS[name](tmp_path)
    untrained = cases.flat_weights(cases.Net())
    assert float((reference - untrained).abs().max()) > 1e-3  # it trained
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-6)
    assert torch.equal(two_ranks[1][name], got)


def test_ranks_with_different_groups_stop_with_one_line_each(two_ranks):
    for rank in (0, 1):
        message = two_ranks[rank]["failure/groups"]
        assert message.startswith(f"RanksError: rank {rank}: the ranks disagree on the loss "
                                  "groups"), message


@pytest.mark.parametrize("case", ["raises", "raises_selecting"])
def test_a_rank_that_fails_mid_step_stops_every_rank(case, two_ranks):
    """Rank 1's own error; rank 0 is told instead of waiting for it forever."""
    assert two_ranks[1][f"failure/{case}"].startswith(
        "GradsurgError: loss group 'b' reaches no trainable parameter")
    assert two_ranks[0][f"failure/{case}"] == (
        "RanksError: rank 0: another rank failed in this step (its own error says why); "
        "stopping every rank")


def test_a_nonfinite_loss_on_one_rank_is_skipped_by_every_rank(two_ranks):
    got = two_ranks[0]["nonfinite_one_rank"]
    assert torch.equal(two_ranks[1]["nonfinite_one_rank"], got)
    assert got[-1] == 1  # one skipped step
    reference = cases.nonfinite_on_one_rank()
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-6)


def test_fsdp1_and_sharding_after_the_surgery_are_refused_with_what_works(two_ranks):
    messages = two_ranks[0]["unsupported"]
    assert messages["fsdp1"].startswith("ConfigError: the model is wrapped in "
                                        "FullyShardedDataParallel (FSDP1")
    assert "fully_shard" in messages["fsdp1"]
    assert messages["sharded_late"].startswith(
        "ConfigError: the model's parameters were replaced after the Surgery was built")
