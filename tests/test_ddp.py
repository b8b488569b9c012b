"""Distributed data parallel: 2 CPU processes (gloo) against one process, same global batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from fcmae.cli import preflight
from fcmae.engine import seed_everything
from fcmae.pretrain import pretrain_from_spec, specs_from_config
from tests.conftest import free_port

STEPS = 3
COMMON = ["debug=default", f"trainer.max_steps={STEPS}", "trainer.num_threads=1",
          "trainer.recon_images=0", "data.samples_per_epoch=8"]  # fmt: skip


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    # A periodic save on the final step: every rank must then skip the closing save together.
    overrides = [*COMMON, "trainer.batch_size=2", f"trainer.ckpt_every={STEPS}"]
    spec = preflight("pretrain", overrides, specs_from_config)
    try:
        result = pretrain_from_spec(spec, os.path.join(out, "run"))
        torch.save(
            {"losses": result.losses, "weights": result.model.state_dict()},
            os.path.join(out, f"rank{rank}.pt"),
        )
    finally:
        torch.distributed.destroy_process_group()


def _single(tmp_path, *overrides):
    spec = preflight("pretrain", [*COMMON, *overrides], specs_from_config)
    return pretrain_from_spec(spec, tmp_path / "single")


def _initial_weights():
    seed_everything(0)  # what pretrain() does before building the model (seed 0, rank 0)
    spec = preflight("pretrain", COMMON, specs_from_config)
    return spec.model.build().state_dict()


def _assert_same_updates(a, b, rtol=5e-3):
    """The updates ``a - w0`` and ``b - w0`` agree to ``rtol`` (relative L2 error per tensor).

    Adam divides by sqrt(v): last-bit differences of tiny gradients (float sums in another
    order) move single weights by a fraction of lr, so weights are compared through updates.
    """
    w0 = _initial_weights()
    worst = 0.0
    for k in a:
        da, db = a[k] - w0[k], b[k] - w0[k]
        if db.norm() == 0:
            assert da.norm() == 0, k
            continue
        rel = ((da - db).norm() / db.norm()).item()
        worst = max(worst, rel)
        assert rel <= rtol, f"{k}: relative update difference {rel:.3g} > {rtol}"
    return worst


@pytest.mark.timeout(180)
def test_two_processes_match_one_process(tmp_path):
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    for k, v in r0["weights"].items():  # DDP keeps the replicas bit-identical
        assert torch.equal(v, r1["weights"][k]), k
    assert r0["losses"] == r1["losses"]  # the logged loss is the global mean on every rank

    single = _single(tmp_path, "trainer.batch_size=4")
    assert len(single.losses) == STEPS
    # same samples, crops and masks; only the order of float reductions differs
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(single.losses),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    _assert_same_updates(r0["weights"], single.model.state_dict())
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2  # per-rank RNG states


def test_gradient_accumulation_matches_large_batch(tmp_path):
    big = _single(tmp_path / "a", "trainer.batch_size=4")
    accum = _single(tmp_path / "b", "trainer.batch_size=2", "trainer.accum_steps=2")
    torch.testing.assert_close(torch.tensor(accum.losses), torch.tensor(big.losses),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    _assert_same_updates(accum.model.state_dict(), big.model.state_dict())
