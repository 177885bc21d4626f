"""The unlearning loop (GUIDE-SPEC section 3): fine-tune G_u so that each w_u (and its neighbourhood)
renders its de-identified target of the frozen G_s, while random latents render as before.

Each iteration trains B of the N identities (all of them when N <= B), each with its local pair and
N_adj adjacency pairs, plus N_glob global latents; all latents of one side go through ONE batched
generator call (one identity: local + adjacency + global = 5 latents per side), so an iteration costs
the same whatever N is. The `reference_loop` mode keeps the official code's structure (one generator
call per latent, losses computed pair by pair) for timing; both compute the same mathematics.
Randomness of iteration i comes from stream(seed, i) (engine/rng.py) (the identities drawn, from
their own stream), and the global RNG is seeded the same way during the iteration (EG3D samples rays
with it): resuming needs no RNG state. With cfg.cuda_graph the iteration's forward, backward and Adam step
are captured once and replayed (guide/cuda_graph.py).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine.errors import GuideEngineError
from ..engine.progress import bar
from ..engine.rng import seeded_rng, stream, stream_seed
from ..kernels import latent_adjacency
from . import cuda_graph, distributed
from .config import UnlearnConfig
from .history import History
from .losses import LOCAL, Terms, guide_loss, pair_terms, push_past, roles
from .robust import Attacker

IDENTITY_STREAM = 300_007  # the identities an iteration trains come from the stream stream(seed, it, this)
SHOWN = ("total", "local", "adj", "glob", "push", "robust", "attack_dist")  # in the progress bar
ATTACKER_SEED = 7_919  # identity i's attacker pool is seeded with seed + ATTACKER_SEED * i


def identity_batch(n: int, b: int, seed: int, it: int) -> torch.Tensor:
    """The identities (indices into 0..n-1, sorted) that iteration `it` trains: all of them when n <= b,
    else b drawn without replacement, a function of (seed, it) alone."""
    if n <= b:
        return torch.arange(n)
    rng = stream(seed, it, IDENTITY_STREAM)
    return torch.randperm(n, generator=rng)[:b].sort().values


@dataclass
class Batch:
    """An iteration's constants: the latents of each side, laid out [local (B), adjacency (B n_adj),
    global (n_glob)], their roles, the camera (3D-aware generators render all of them from one), B. A part
    of a batch keeps the order: its local rows, if any, come first (n_local of them)."""

    lat_u: torch.Tensor
    lat_t: torch.Tensor
    role: torch.Tensor
    view: object
    ids: torch.Tensor  # (B,) which identities (indices into w_u) this iteration trains
    identity: torch.Tensor  # (rows,) the identity of each local and adjacency row; -1 for global rows
    n_local: int  # how many of the rows are local pairs: the first ones

    @property
    def n_identities(self) -> int:
        return len(self.ids)

    def rows(self, index) -> "Batch":
        """A part of the batch (a micro-batch, a rank's share: a slice or sorted indices) with the same loss
        normalisation."""
        role = self.role[index]
        n_local = int((role == LOCAL).sum())
        assert bool((role[:n_local] == LOCAL).all()), "a part of a batch keeps its order: local rows first"
        return Batch(self.lat_u[index], self.lat_t[index], role, self.view, self.ids, self.identity[index], n_local)


def iteration_latents(G_s, w_u, w_t, cfg: UnlearnConfig, it: int) -> Batch:
    """w_u, w_t (N, *S) => iteration `it`'s Batch. Constants. GUIDE-SPEC section 3, per identity."""
    ids = identity_batch(len(w_u), cfg.identities_per_iter, cfg.seed, it).to(w_u.device)
    b = len(ids)
    rng = stream(cfg.seed, it)
    w_r = G_s.sample_latents(b * cfg.n_adj + cfg.n_glob, rng)
    alpha = (torch.rand(b * cfg.n_adj, generator=rng) * cfg.alpha_max).to(w_u.device)
    own_u, own_t = w_u[ids].repeat_interleave(cfg.n_adj, 0), w_t[ids].repeat_interleave(cfg.n_adj, 0)
    src_adj, tgt_adj = latent_adjacency(own_u, own_t, w_r[:b * cfg.n_adj], alpha, impl=cfg.kernels)
    w_glob = w_r[b * cfg.n_adj:]
    view = G_s.sample_view(rng)
    ids = ids.cpu()
    identity = torch.cat([ids, ids.repeat_interleave(cfg.n_adj), torch.full((cfg.n_glob,), -1, dtype=ids.dtype)])
    return Batch(torch.cat([w_u[ids], src_adj, w_glob]), torch.cat([w_t[ids], tgt_adj, w_glob]),
                 roles(b, cfg.n_adj, cfg.n_glob), view, ids, identity, b)


class TargetCache:
    """The local pairs' target side, G_s(w_t) and the identity network's features of it: constants of a run
    when the generator has no camera (EG3D renders each iteration from another one). Computed once, at
    the run's precision; the adjacency and global targets change every iteration and are not cached."""

    def __init__(self, G_s, identity_net, w_t: torch.Tensor, cfg: UnlearnConfig, perceptual=None):
        with torch.no_grad():
            self.x, self.rep = G_s.synthesize_with_representation(w_t, None)
            self.feats, self.desc = identity_net.features(self.x) if perceptual is None else (None, None)
        self.with_features = perceptual is None
        self.source_desc = None  # the push-past term's sources, G_s(w_u): set by with_sources

    def with_sources(self, G_s, identity_net, w_u: torch.Tensor) -> "TargetCache":
        """Also keep the identity network's descriptors of G_s(w_u) (constants too)."""
        with torch.no_grad():
            self.source_desc = identity_net.descriptors(G_s.synthesize(w_u))
        return self

    @staticmethod
    def usable(G_s) -> bool:
        return G_s.sample_view(torch.Generator().manual_seed(0)) is None

    def target_side(self, G_s, identity_net, batch: Batch):
        """=> (x_t, rep_t, identity features of x_t or None) for the batch's rows: the local rows (first in a
        batch, and so in any part of one: parts keep the order) from the cache, the others computed."""
        ids = batch.identity[:batch.n_local].to(self.x.device)  # the local rows' identities
        rest = batch.lat_t[batch.n_local:]
        x, rep = G_s.synthesize_with_representation(rest, batch.view) if len(rest) else (self.x[:0], self.rep[:0])
        x_t, rep_t = torch.cat([self.x[ids], x]), torch.cat([self.rep[ids], rep])
        if not self.with_features:
            return x_t, rep_t, None
        feats, desc = identity_net.features(x) if len(rest) else ([f[:0] for f in self.feats], self.desc[:0])
        joined = [torch.cat([c[ids], f]) for c, f in zip(self.feats, feats)]
        return x_t, rep_t, (joined, torch.cat([self.desc[ids], desc]))


def step_batched(G_u, G_s, identity_net, batch: Batch, cfg: UnlearnConfig, perceptual=None,
                 cache: TargetCache | None = None) -> dict[str, torch.Tensor]:
    """One generator call per side for all the batch's latents => the named losses."""
    x_u, rep_u = G_u.synthesize_with_representation(batch.lat_u, batch.view)  # one call per side
    with torch.no_grad():
        if cache is None:
            (x_t, rep_t), target = G_s.synthesize_with_representation(batch.lat_t, batch.view), None
        else:
            x_t, rep_t, target = cache.target_side(G_s, identity_net, batch)
    terms = pair_terms(identity_net, rep_u, rep_t, x_u, x_t, impl=cfg.kernels, perceptual=perceptual, target=target)
    return with_push(guide_loss(terms, batch.role, batch.n_identities, cfg.losses), terms, G_s, identity_net, batch,
                     cfg, cache)


def with_push(out: dict, terms: Terms, G_s, identity_net, batch: Batch, cfg: UnlearnConfig,
              cache: TargetCache | None = None) -> dict[str, torch.Tensor]:
    """GUIDE's losses plus, with cfg.push_weight, the push-past term on the batch's local rows (averaged over
    the iteration's identities, like the pairs): their faces under G_u against G_s's at the same w_u."""
    if not cfg.push_weight:
        return out
    n = batch.n_local  # the local rows come first
    if cache is not None and cache.source_desc is not None:
        source = cache.source_desc[batch.identity[:n].to(cache.source_desc.device)]
    else:
        with torch.no_grad():
            source = identity_net.descriptors(G_s.synthesize(batch.lat_u[:n], batch.view)) if n \
                else terms.desc_u[:0].detach()
    out["push"] = cfg.push_weight * push_past(identity_net, terms.desc_u[:n], source, cfg.push_margin).sum() \
        / batch.n_identities
    out["total"] = out["total"] + out["push"]
    return out


def backward_micro_batched(G_u, G_s, identity_net, batch: Batch, cfg: UnlearnConfig, perceptual=None,
                           scale: float = 1.0, cache: TargetCache | None = None) -> dict[str, torch.Tensor]:
    """step_batched over chunks of cfg.micro_batch latents, each chunk's backward at once: the loss is a
    sum over latents, so the accumulated gradient is the full one, with 1/chunks of the activations
    alive (EG3D at 512 px). Under DDP only the last chunk's backward synchronises gradients.
    => the detached losses; the gradients (of `scale` times the loss) are in .grad."""
    total: dict[str, torch.Tensor] = {}
    starts = range(0, batch.lat_u.shape[0], cfg.micro_batch)
    for i in starts:
        last = i == starts[-1]
        with contextlib.nullcontext() if last or not hasattr(G_u, "no_sync") else G_u.no_sync():
            part = step_batched(G_u, G_s, identity_net, batch.rows(slice(i, i + cfg.micro_batch)), cfg, perceptual,
                                cache)
            (scale * part["total"]).backward()
        for k, v in part.items():
            total[k] = total.get(k, 0) + v.detach()
    return total


def step_reference(G_u, G_s, identity_net, batch: Batch, cfg: UnlearnConfig,
                   perceptual=None) -> dict[str, torch.Tensor]:
    """The official code's structure: one generator call and one loss evaluation per latent."""
    per = []
    for i in range(batch.lat_u.shape[0]):
        x_u, rep_u = G_u.synthesize_with_representation(batch.lat_u[i:i + 1], batch.view)
        with torch.no_grad():
            x_t, rep_t = G_s.synthesize_with_representation(batch.lat_t[i:i + 1], batch.view)
        per.append(pair_terms(identity_net, rep_u, rep_t, x_u, x_t, impl=cfg.kernels, perceptual=perceptual))
    terms = Terms(*(torch.cat([getattr(t, f.name) for t in per]) for f in dataclasses.fields(Terms)))
    return with_push(guide_loss(terms, batch.role, batch.n_identities, cfg.losses), terms, G_s, identity_net, batch,
                     cfg)


@torch.no_grad()
def pretrained_photos(G_s, w_u: torch.Tensor, seed: int) -> torch.Tensor:
    """(N, *S) => (N, 3, H, W) what G_s draws at each w_u, the same in every run with this seed: what the robust
    mode's attackers invert for identities given as seeds."""
    with seeded_rng(stream_seed(seed, -1), w_u.device):
        return G_s.synthesize(w_u)


def _save_checkpoint(path: Path, G_u, opt, it: int, attackers: list[Attacker]) -> None:
    from ..engine.files import atomic_write

    state = {"iter": it, "G_u": G_u.state_dict(), "opt": opt.state_dict(),
             "attackers": [a.state_dict() for a in attackers]}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def run_unlearning(G_s, identity_net, w_u: torch.Tensor, w_t: torch.Tensor, cfg: UnlearnConfig,
                   checkpoint: Path | None = None, resume: bool = False, progress: bool = True,
                   stop_after: int | None = None, perceptual=None, photo: torch.Tensor | None = None,
                   init: dict | None = None, history_csv: Path | None = None):
    """w_u, w_t (N, *S): the identities and their targets => (G_u, history). G_s stays frozen; a copy of it
    (with the `init` state dict loaded: a run continued from another) is fine-tuned. With `checkpoint`,
    the state is saved every cfg.checkpoint_every iterations; `resume` continues from it. `perceptual`:
    a module (x_a, x_b) => (N,) such as LPIPS-VGG; None = the LPIPS-style distance on identity features.
    `photo` (N, 3, H, W): what the robust mode's attackers invert, one per identity (None: what G_s
    draws at each w_u)."""
    cfg.validate()
    if cfg.cuda_graph and (why := cuda_graph.refusal_at_run(cfg.device, not TargetCache.usable(G_s),
                                                             distributed.active())):
        raise GuideEngineError(f"--cuda-graph: {why}")
    if hasattr(identity_net, "at_precision"):
        identity_net = identity_net.at_precision(cfg.precision)
    G_s.eval()
    for p in G_s.parameters():
        p.requires_grad_(False)
    G_u = copy.deepcopy(G_s)
    if init is not None:
        G_u.load_state_dict(init)
    G_u.train_mode()
    params = list(G_u.trainable_parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr, fused=cfg.fused_adam or None,  # None: torch's default implementation
                           capturable=cfg.cuda_graph)  # its step count on the device, where a graph can count
    trainee = G_u  # what the step calls: G_u itself, or G_u behind DistributedDataParallel
    if distributed.active():
        if cfg.reference_loop or cfg.robust is not None:
            raise GuideEngineError("under torch.distributed: --reference-loop and --robust are refused (the reference "
                                   "loop is for timing one process; the attackers' pools are not sharded yet)")
        trainee = distributed.DDPGenerator(G_u, cfg.device)
    attackers: list[Attacker] = []  # one pool per identity (robust mode)
    if cfg.robust is not None:
        if photo is None:
            photo = pretrained_photos(G_s, w_u, cfg.seed)
        attackers = [Attacker(G_s, identity_net, photo[i:i + 1].to(w_u.device), cfg.robust,
                              cfg.seed + ATTACKER_SEED * i)
                     for i in range(len(w_u))]
    start = 0
    if resume:
        if checkpoint is None or not checkpoint.is_file():
            raise GuideEngineError(f"--resume: no checkpoint at {checkpoint}")
        try:
            state = torch.load(checkpoint, map_location=cfg.device, weights_only=True)
            G_u.load_state_dict(state["G_u"])
            opt.load_state_dict(state["opt"])
            for a, s in zip(attackers, state["attackers"]):
                a.load_state_dict(s)
            start = state["iter"]
        except Exception as e:  # truncated, or not a checkpoint of this run
            raise GuideEngineError(f"--resume: {checkpoint} does not load ({type(e).__name__}); it is damaged: start "
                                   f"the run again under a new --out") from None
    cache = TargetCache(G_s, identity_net, w_t, cfg, perceptual) \
        if cfg.cache_targets and not cfg.reference_loop and TargetCache.usable(G_s) else None
    if cache is not None and cfg.push_weight:
        cache.with_sources(G_s, identity_net, w_u)
    step = step_reference if cfg.reference_loop else functools.partial(step_batched, cache=cache)
    graphed = cuda_graph.GraphedStep(functools.partial(step_batched, trainee, G_s, identity_net, cfg=cfg,
                                                       perceptual=perceptual, cache=cache), opt) \
        if cfg.cuda_graph else None
    history = []
    end = cfg.iters if stop_after is None else min(cfg.iters, stop_after)
    record = History(history_csv, start) if history_csv is not None and distributed.is_writer() else None
    shown = bar(cfg.iters, "unlearn", enabled=progress, initial=start, unit="it")
    for it in range(start, end):
        t_it = time.perf_counter()
        batch = iteration_latents(G_s, w_u, w_t, cfg, it)
        scale = 1.0
        if distributed.active():  # this rank's share; DDP averages gradients over ranks, so each loss counts K times
            mine = distributed.shard_rows(batch.role, batch.n_identities, cfg.n_adj, distributed.rank(),
                                          distributed.world())
            scale = float(distributed.world())
            if len(mine) == 0:  # nothing for this rank this time: a zero-weighted row keeps DDP's all-reduce in step
                mine, scale = torch.tensor([len(batch.role) - 1]), 0.0
            batch = batch.rows(mine)
        # Generators that draw random numbers inside (EG3D's stratified ray samples) draw them from the
        # global RNG: seed it per iteration too, so runs and resumed runs repeat exactly.
        with seeded_rng(stream_seed(cfg.seed, it), w_u.device):
            if graphed is not None:  # forward, backward and Adam's step as one replay (guide/cuda_graph.py)
                losses = graphed(batch)
            else:
                opt.zero_grad(set_to_none=True)
                drawn = [attackers[i] for i in batch.ids.tolist()] if attackers else []
                for a in drawn:
                    a.advance(G_u, it)  # the attackers move first, against the current G_u
                if cfg.micro_batch and not cfg.reference_loop:
                    losses = backward_micro_batched(trainee, G_s, identity_net, batch, cfg, perceptual, scale, cache)
                else:
                    losses = step(trainee, G_s, identity_net, batch, cfg, perceptual)
                    (scale * losses["total"]).backward()
                if drawn:
                    found = [a.loss(G_u, G_s, it) for a in drawn]
                    robust = sum(f["robust"] for f in found) / len(drawn)  # averaged over identities, like the pairs
                    if robust.requires_grad:  # (nothing to hinge or keep yet: a search-only attacker before its finds)
                        robust.backward()  # gradients add up: the total loss is GUIDE's plus this
                    losses["total"] = losses["total"].detach() + robust.detach()
                    losses.update(robust=robust.detach(), attack_dist=min(f["attack_dist"] for f in found))
                opt.step()
        if distributed.active():  # the iteration's losses, summed over the ranks' shares
            losses = {k: v.detach() * (scale / distributed.world()) for k, v in losses.items()}
            for v in losses.values():
                torch.distributed.all_reduce(v)
        history.append({**{k: round(v.item(), 6) for k, v in losses.items()}, "s": time.perf_counter() - t_it})
        if record is not None:  # before the checkpoint: a kill between the two never leaves a gap on resume
            record.append(it + 1, history[-1], history[-1]["s"])
        if checkpoint is not None and ((it + 1) % cfg.checkpoint_every == 0 or it + 1 == end):
            if distributed.is_writer():
                _save_checkpoint(checkpoint, G_u, opt, it + 1, attackers)
            distributed.barrier()
        shown.update()
        if not shown.disable and (it % 10 == 0 or it + 1 == end):
            h = history[-1]
            shown.set_postfix({k: f"{h[k]:.4f}" for k in SHOWN if k in h} | {"s/it": f"{h['s']:.3f}"}, refresh=False)
    shown.close()
    for p in params:
        p.requires_grad_(False)
    G_u.eval()
    return G_u, history
