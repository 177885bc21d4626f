"""torch.distributed: 2 ranks on gloo (spawned here, on the CPU) train the same weights as one process;
the rows of an iteration are shared out whole identities at a time; torchrun runs the CLI."""
import os
import subprocess
import sys

import pytest
import torch

from guide_engine.engine.models import zoo
from guide_engine.guide.distributed import shard_rows
from guide_engine.guide.losses import roles

SEEDS = (61, 62, 63)


def _run(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from guide_engine.engine.models import zoo
    from guide_engine.guide.config import UnlearnConfig
    from guide_engine.guide.target import ufo_target
    from guide_engine.guide.unlearn import run_unlearning

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    G, net = zoo.load_generator().double(), zoo.load_identity().double()  # float64: see the test below
    w_u = G.latents_for_seeds(SEEDS).double()
    w_t = torch.cat([ufo_target(w_u[i:i + 1], G.average_latent(), 10.0) for i in range(len(w_u))])
    G_u, hist = run_unlearning(G, net, w_u, w_t, UnlearnConfig(iters=4, alpha_max=5.0, identities_per_iter=2),
                               progress=False)
    if rank == 0:
        torch.save({"state": G_u.state_dict(), "total": [h["total"] for h in hist]}, out)
    if world > 1:
        dist.destroy_process_group()


def test_shard_rows_keeps_identities_whole():
    role = roles(3, 2, 2)  # [L0 L1 L2 | A0 A0 A1 A1 A2 A2 | G0 G1]
    shares = [shard_rows(role, 3, 2, k, 2).tolist() for k in range(2)]
    assert shares == [[0, 2, 3, 4, 7, 8, 9], [1, 5, 6, 10]]
    assert sorted(sum(shares, [])) == list(range(len(role)))
    assert shard_rows(role, 3, 2, 0, 1).tolist() == list(range(len(role)))


@pytest.mark.slow
def test_two_ranks_train_the_same_weights_as_one(tmp_path):
    """In float64, to 1e-9: the same mathematics. (In float32 the ranks' sums in another order differ in the
    last bits, and Adam's g / sqrt(v) turns that into ~1e-4 by iteration 4, as for the batched attack.)"""
    import torch.multiprocessing as mp

    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    threads = torch.get_num_threads()
    try:
        _run(0, 1, "", str(one))
    finally:
        torch.set_num_threads(threads)  # _run sets 1 thread (as in the spawned ranks): not for the tests after this one
    mp.spawn(_run, args=(2, str(tmp_path / "init"), str(two)), nprocs=2, join=True)
    a, b = torch.load(one), torch.load(two)
    assert a["total"] == pytest.approx(b["total"], rel=1e-9)  # the logged losses are the whole iteration's
    for k, v in a["state"].items():
        torch.testing.assert_close(b["state"][k], v, atol=1e-9, rtol=0)
    base = zoo.load_generator().double().state_dict()
    assert any((v - base[k]).abs().max() > 1e-4 for k, v in a["state"].items())  # it trained


@pytest.mark.slow
def test_torchrun_cli(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "guide_engine.apps.cli", "unlearn", "--seeds", "61,62,63", "--iters", "2",
                           "--target-search", "4", "--identities-per-iter", "2", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("unlearned generator:") == 1  # rank 0 alone speaks and writes
    import json

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["job"]["ranks"] == 2 and len(json.loads((out / "identities.json").read_text())["identities"]) == 3
