"""Every setting of an unlearning run, declared once.

`UnlearnConfig` is the one declaration: each field that a user sets carries its command-line flag and help
(engine/settings.py; `apps/cli.py` builds the `unlearn` options from these fields, each defaulting to "not
given"), and fields the job works out from the generator (`resolved`) start as None. `resolve` fills them in; the loop
(guide/unlearn.py) receives the resolved config, and `config.json` in the run directory is that config.
A new setting is one field here.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..engine.errors import GuideEngineError
from ..engine.models.zoo import DEFAULT_GENERATOR, DEFAULT_IDENTITY
from ..engine.precision import check as check_precision
from ..engine.settings import flag, from_flags, resolved
from .calibration import quantile
from .cuda_graph import refusal as cuda_graph_refusal
from .robust import RobustConfig
from .target import resolve_distance

ALL_LOSSES = ("local", "adj", "glob")
MAX_ITERS = 200_000  # --iters beyond this is refused: a typo, not a run (at 0.35 s/iter on the CPU, 19 hours)
DEFAULT_ITERS = 400  # one identity (official: 1000; docs/design.md)
UPDATES_PER_IDENTITY = 200  # with many: iterations in which each identity is drawn, on average (docs/many.md)
DEFAULT_D_REL = 1.0  # d = r: the target sits on the prior's typical shell, opposite the identity
ALPHA_PER_D = 15 / 30  # the official alpha_max / d for EG3D (15 / 30), kept as a ratio
PUSH_WEIGHT = 1.0  # --push-past: the term's weight, and its margin relative to the strangers' median distance
PUSH_MARGIN_REL = 1.85  # under the training network (dlib: 1.85 x 0.543 = 1.00, past every stranger pair's 0.81)
DEFAULT_PRECISION = "fp32"  # of the networks' passes in the loop, the inversion and the attack (docs/performance.md)


def _losses(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


@dataclass(frozen=True)
class UnlearnConfig:
    # -- the models --------------------------------------------------------------------------------
    generator: str = flag(DEFAULT_GENERATOR, "A model name, nvlabs:PATH.pkl, or a run directory to continue from "
                          "(its weights and ledger); resolved to the run's base generator.")
    identity: str = flag(DEFAULT_IDENTITY, "The training identity network: dlib-resnet-v1, arcface-mbf, edgeface-s, "
                         "arcface-ir-se50:PATH.pth, or several joined by + (an ensemble, each in its own units).")
    lpips_vgg: str | None = flag(None, "torchvision VGG16 weights: use LPIPS-VGG as the perceptual loss (needs the "
                                 "lpips package).")
    # -- the loop ----------------------------------------------------------------------------------
    iters: int | None = flag(None, "Iterations.", shown="400 for up to --identities-per-iter people; then enough "
                             "that each is trained 200 times on average")
    identities_per_iter: int = flag(4, "Identities trained per iteration.")
    lr: float = flag(1e-4, "Adam's learning rate.")
    losses: tuple[str, ...] = flag(ALL_LOSSES, "Baseline: --target average --losses local.", parse=_losses,
                                   shown="local,adj,glob")
    seed: int = flag(0, "Seed of the loop's random latents.", name="--run-seed")
    checkpoint_every: int = flag(100, "Iterations between checkpoints (for --resume).")
    reference_loop: bool = flag(False, "Official code structure: one generator call per latent.", is_flag=True)
    micro_batch: int = flag(0, "Latents per forward/backward, gradients accumulated (same result, less memory); "
                            "0 = all at once.")
    precision: str = flag(DEFAULT_PRECISION, "The identity network's passes in bf16 autocast or fp32 (the generator, "
                          "weights, Adam and losses stay fp32).", choices=("bf16", "fp32"))
    device: str = flag("cpu", "cpu or cuda.", shown="cuda when present")  # the CLI's default: engine/runtime.py
    cuda_graph: bool = flag(False, "Capture the iteration (forward, backward, Adam's step) once as a CUDA graph and "
                            "replay it: the same iterations, fewer launches (guide/cuda_graph.py).", is_flag=True)
    # -- the identity and its target ---------------------------------------------------------------
    invert_steps: int = flag(300, "Adam steps inverting each photo.")
    target: str = flag("extra", "UFO extrapolation (GUIDE) or the average latent (baseline).",
                       choices=("extra", "average"))
    target_search: int = flag(64, "Far-side target candidates checked by the identity net; 0 = the UFO formula "
                              "alone (--target average: 0).")
    target_angle: float = flag(30.0, "Largest angle (degrees) of a candidate from the UFO direction.")
    target_distance: float | None = flag(None, "d, absolute.", shown="resolved from --target-distance-rel")
    target_distance_rel: float | None = flag(None, "d relative to r = median ||w - w_avg||.", shown="1.0")
    alpha_max_rel: float | None = flag(None, "Adjacency range relative to r.", shown="0.5 d / r")
    # -- beyond GUIDE ------------------------------------------------------------------------------
    robust: RobustConfig | None = flag(None, "Attack-aware: an attacker re-inverting the photo inside the loop, its "
                                       "faces pushed off the person; with --identity arcface-mbf (non-commercial "
                                       "weights) it holds best against the strongest attacker (docs/robust.md).",
                                       is_flag=True,
                                       parse=lambda on: RobustConfig() if on else None)
    push_past: bool = flag(False, "Also push each unlearned face past a margin from the person under the training "
                           "network, beyond its target (docs/many.md).", is_flag=True)
    # -- worked out by `resolve` -------------------------------------------------------------------
    radius: float | None = resolved(note="r = median ||w - w_avg|| of the generator's prior")
    alpha_max: float | None = resolved(note="alpha_max_rel * r")
    perceptual: str = resolved("", "the perceptual loss's name")
    fused_adam: bool = resolved(True, "not --reference-loop: the official code keeps torch's default Adam")
    push_weight: float = resolved(0.0, "PUSH_WEIGHT with --push-past")
    push_margin: float = resolved(0.0, "PUSH_MARGIN_REL x the strangers' median (training network)")
    # -- fixed by the method (not flags) -----------------------------------------------------------
    n_adj: int = 2  # adjacency pairs per identity and iteration
    n_glob: int = 2  # global preservation latents per iteration
    kernels: str = "auto"  # the loss kernels: Triton on CUDA, the torch references elsewhere (kernels/)
    cache_targets: bool = True  # compute the local pairs' constant target side once (guide/unlearn.py: TargetCache)

    @classmethod
    def from_flags(cls, given: dict) -> "UnlearnConfig":
        """The command line's values (None or False: not given) => a config with the defaults for the rest."""
        return from_flags(cls, given)

    def validate(self) -> None:
        """Everything cheap, before any file is written or any model loaded."""
        if self.iters is not None and not 1 <= self.iters <= MAX_ITERS:
            raise GuideEngineError(f"--iters {self.iters}: must be within 1-{MAX_ITERS:,} (the default for one person "
                                   f"is 400; {MAX_ITERS:,} take about 19 hours on a 2-core CPU)")
        if not self.lr > 0:
            raise GuideEngineError(f"--lr {self.lr}: must be positive")
        bad = set(self.losses) - set(ALL_LOSSES)
        if bad or not self.losses:
            raise GuideEngineError(f"--losses {','.join(self.losses)}: choose from local,adj,glob")
        if self.micro_batch < 0:
            raise GuideEngineError(f"--micro-batch {self.micro_batch}: must be 0 (all at once) or positive")
        check_precision(self.precision)
        if self.cuda_graph and (why := cuda_graph_refusal(self)):
            raise GuideEngineError(f"--cuda-graph: {why}")
        if self.cuda_graph and not str(self.device).startswith("cuda"):
            raise GuideEngineError(f"--cuda-graph: CUDA graphs need --device cuda (this run: {self.device})")
        if self.push_weight < 0 or (self.push_weight > 0 and not self.push_margin > 0):
            raise GuideEngineError("push past: the weight must be >= 0 and, when it is not 0, the margin positive")
        if self.identities_per_iter < 1:
            raise GuideEngineError(f"--identities-per-iter {self.identities_per_iter}: must be at least 1")
        if self.target_search < 0 or not 0 <= self.target_angle <= 90:
            raise GuideEngineError("--target-search must be >= 0 and --target-angle within [0, 90] degrees")
        if self.robust is not None:
            self.robust.validate()
            if self.reference_loop:
                raise GuideEngineError("--robust with --reference-loop: refused; the reference loop reproduces the "
                                       "official code's structure for timing, and the official code has no attacker")

    def flag_of(self, name: str) -> str:
        """The command-line flag behind a field (a resolved field: the flag it is resolved from)."""
        behind = {"radius": "generator", "alpha_max": "alpha_max_rel", "perceptual": "lpips_vgg",
                  "fused_adam": "reference_loop", "push_weight": "push_past", "push_margin": "push_past"}
        f = {f.name: f for f in dataclasses.fields(self)}[behind.get(name, name)]
        return f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"


def default_iters(n_identities: int, per_iter: int) -> int:
    """One identity: DEFAULT_ITERS. More than fit in an iteration: enough that each is drawn
    UPDATES_PER_IDENTITY times on average, and never fewer than DEFAULT_ITERS."""
    if n_identities <= per_iter:
        return DEFAULT_ITERS
    return max(DEFAULT_ITERS, math.ceil(UPDATES_PER_IDENTITY * n_identities / per_iter))


def resolve(cfg: UnlearnConfig, *, base: str, device: str, radius: float, n_identities: int, perceptual: str,
            strangers: dict | None) -> UnlearnConfig:
    """The settings the job works out, filled in: the base generator (a continued run's), the device, the
    iterations for this many identities, d and alpha_max from r, the perceptual loss's name, and the margins
    from `strangers` (the training network's calibration on the base generator: guide/calibration.py; needed
    with --robust and --push-past)."""
    d = resolve_distance(radius, cfg.target_distance, cfg.target_distance_rel, DEFAULT_D_REL)
    a_rel = ALPHA_PER_D * d / radius if cfg.alpha_max_rel is None else cfg.alpha_max_rel
    robust = cfg.robust
    if robust is not None and robust.margin is None:  # a quantile of the strangers' distances
        robust = dataclasses.replace(robust, margin=quantile(strangers, robust.margin_quantile))
    return dataclasses.replace(
        cfg, generator=base, device=device, iters=cfg.iters or default_iters(n_identities, cfg.identities_per_iter),
        target_distance=d, target_distance_rel=d / radius, radius=radius, alpha_max=a_rel * radius,
        alpha_max_rel=a_rel, target_search=cfg.target_search if cfg.target == "extra" else 0,
        perceptual=perceptual, fused_adam=not cfg.reference_loop, robust=robust,
        push_weight=PUSH_WEIGHT if cfg.push_past else 0.0,
        push_margin=PUSH_MARGIN_REL * strangers["strangers_dist_median"] if cfg.push_past else 0.0)
