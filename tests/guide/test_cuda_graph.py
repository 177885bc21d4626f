"""`unlearn --cuda-graph`: the iteration's step holds no host synchronisation (traced as one graph here, on
the CPU), the settings a graph cannot hold are refused in one line, and on a GPU the graphed loop computes
the same iterations as the eager one (tests marked gpu)."""
import copy
import dataclasses

import pytest
import torch
from click.testing import CliRunner

from guide_engine.apps.cli import main
from guide_engine.engine.errors import GuideEngineError
from guide_engine.guide.config import UnlearnConfig
from guide_engine.guide.robust import RobustConfig
from guide_engine.guide.target import ufo_target
from guide_engine.guide.unlearn import TargetCache, iteration_latents, run_unlearning, step_batched

GRAPH_LOSS_RTOL = 1e-5  # the bar: the same losses to 1e-5 relative over 20 iterations


def _identities(generator, n):
    w_u = generator.latents_for_seeds(range(80, 80 + n))
    return w_u, torch.cat([ufo_target(w_u[i:i + 1], generator.average_latent(), 10.0) for i in range(n)])


@pytest.mark.parametrize("cached, push", [(True, True), (False, True), (True, False)])
def test_step_traces_as_one_graph(generator, identity, cached, push):
    """A data-dependent shape or a read of a tensor's value on the host (a boolean index, .item(), .any())
    would break the trace: each is a host synchronisation that a CUDA graph cannot capture."""
    cfg = UnlearnConfig(iters=1, alpha_max=5.0, push_weight=1.0 if push else 0.0, push_margin=1.0)
    w_u, w_t = _identities(generator, 2)
    cache = TargetCache(generator, identity, w_t, cfg).with_sources(generator, identity, w_u) if cached else None
    batch = iteration_latents(generator, w_u, w_t, cfg, 0)
    G_u = copy.deepcopy(generator)
    eager = step_batched(G_u, generator, identity, batch, cfg, cache=cache)
    traced = torch.compile(lambda b: step_batched(G_u, generator, identity, b, cfg, cache=cache), fullgraph=True,
                           backend="eager")(batch)
    assert set(traced) == set(eager) and ("push" in eager) == push
    for k in eager:
        torch.testing.assert_close(traced[k], eager[k])


@pytest.mark.parametrize("change, named", [({"robust": RobustConfig()}, "--robust"),
                                           ({"micro_batch": 2}, "--micro-batch"),
                                           ({"reference_loop": True, "fused_adam": False}, "--reference-loop"),
                                           ({"precision": "bf16"}, "--precision bf16")])
def test_settings_a_graph_cannot_hold_are_refused(change, named):
    with pytest.raises(GuideEngineError, match=f"^--cuda-graph: {named}"):
        UnlearnConfig(cuda_graph=True, **change).validate()
    UnlearnConfig(cuda_graph=False, **change).validate()


def test_a_cpu_run_is_refused(generator, identity):
    w_u, w_t = _identities(generator, 1)
    with pytest.raises(GuideEngineError, match=r"^--cuda-graph: CUDA graphs need --device cuda \(this run: cpu\)"):
        run_unlearning(generator, identity, w_u, w_t, UnlearnConfig(iters=1, alpha_max=5.0, cuda_graph=True),
                       progress=False)


def test_cli_refuses_before_writing(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["unlearn", "--seed", "0", "--iters", "2", "--cuda-graph", "--robust", "--out",
                                  str(out), "--quiet"])
    assert r.exit_code != 0 and "--cuda-graph: --robust" in r.output and "Traceback" not in r.output
    assert not out.exists() and not any(tmp_path.iterdir())
    if not torch.cuda.is_available():  # on a CPU host the device refuses it, also before OUT.partial/ is made
        r = CliRunner().invoke(main, ["unlearn", "--seed", "0", "--iters", "2", "--cuda-graph", "--out", str(out),
                                      "--quiet"])
        assert r.exit_code == 2 and r.output.strip().splitlines() == [
            "error: --cuda-graph: CUDA graphs need --device cuda (this run: cpu)"]
        assert not any(tmp_path.iterdir())


def test_resume_may_switch_the_graph(tmp_path):
    """--cuda-graph changes how an iteration is launched, not what it computes: like the device, a resumed
    run may take it or leave it."""
    import json

    from guide_engine.guide.job import check_same_config

    cfg = UnlearnConfig(iters=5)
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    check_same_config(tmp_path, dataclasses.replace(cfg, cuda_graph=True))
    with pytest.raises(GuideEngineError, match="--lr"):
        check_same_config(tmp_path, dataclasses.replace(cfg, lr=1e-3))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 6])  # 6 > identities_per_iter: the identities drawn change every iteration
def test_graphed_loop_matches_the_eager_one(generator, identity, n):
    G_s, net = copy.deepcopy(generator).cuda(), copy.deepcopy(identity).cuda()
    w_u, w_t = (w.cuda() for w in _identities(generator, n))
    runs = {}
    for graphed in (False, True):
        cfg = UnlearnConfig(iters=20, alpha_max=5.0, device="cuda", cuda_graph=graphed, push_weight=1.0,
                            push_margin=1.0)
        runs[graphed] = run_unlearning(G_s, net, w_u, w_t, cfg, progress=False)
    (G_eager, h_eager), (G_graph, h_graph) = runs[False], runs[True]
    for a, b in zip(h_eager, h_graph):
        for k in ("local", "adj", "glob", "push", "total"):
            assert b[k] == pytest.approx(a[k], rel=GRAPH_LOSS_RTOL, abs=1e-6), k
    for p, q in zip(G_eager.parameters(), G_graph.parameters()):  # as a whole: Adam turns a gradient's last bits
        assert ((q - p).norm() / p.norm()).item() < 1e-4  # into a full step where that gradient is nearly zero


@pytest.mark.gpu
def test_the_graph_is_captured_after_the_warm_up(generator, identity):
    from guide_engine.guide import cuda_graph

    G_s, net = copy.deepcopy(generator).cuda(), copy.deepcopy(identity).cuda()
    w_u, w_t = (w.cuda() for w in _identities(generator, 1))
    cfg = UnlearnConfig(iters=1, alpha_max=5.0, device="cuda", cuda_graph=True)
    G_u = copy.deepcopy(G_s)
    params = list(G_u.trainable_parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr, fused=True, capturable=True)
    step = cuda_graph.GraphedStep(lambda b: step_batched(G_u, G_s, net, b, cfg), opt)
    for it in range(cuda_graph.WARMUP + 2):
        assert (step.graph is None) == (it <= cuda_graph.WARMUP)
        losses = step(iteration_latents(G_s, w_u, w_t, cfg, it))
        assert set(losses) == {"local", "adj", "glob", "total"} and torch.isfinite(losses["total"])
