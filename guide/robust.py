"""Attack-aware unlearning (`unlearn --robust`): forget the person everywhere an attacker can reach.

GUIDE changes the generator around one latent, w_u. An attacker who inverts the photo again into the
unlearned generator lands elsewhere (13-16 away from w_u on the DCGAN, r = 10), where the generator
still draws the person. So the robust mode puts that attacker inside the loop, as AdvUnlearn does for
diffusion models:

- **The attacker**: a persistent pool of `pool` latents, moved every iteration by `steps` steps of the
  engine's own inversion (guide/invert.py: pixel MSE + perceptual + identity distance to the photo,
  training network only, never the judge) through the current G_u. Every `reseed_every` iterations one
  member (the oldest, round robin; or the farthest from the person) is drawn again from the prior, so the
  pool keeps exploring.
- **The loss on what it finds** (added to GUIDE's three losses): the attacker's faces are pushed past a
  margin of the training network's distance to the photo (a hinge, zero once they are past it), while
  changing as little as possible: `preserve` extra random latents per iteration are held at G_s by
  GUIDE's global-preservation terms, their mean weighted by `preserve_weight` (and, optionally, a
  perceptual `anchor` toward G_s at the attacker's own latents).
- **Memory**: where a member ended when it is re-seeded goes into a bank; a few bank latents join the
  hinge every iteration, so a place the attacker found stays pushed off after the attacker leaves it.
- **Search, then erase** (`search_every` > 0, off by default): every `search_every` iterations a fresh
  attack of `search_starts` new prior draws x `search_steps` steps runs through the current G_u (the same
  inversion, batched), and every end closer to the photo than the margin joins the bank, so the hinge
  reaches places a small pool never visits (STEREO's argument; docs/robust.md); `screen` random latents
  per round are looked at as they are, and the person's lookalikes among them join the bank too.
- **Members apart** (`apart`, off by default; an ensemble `--identity a+b` only): the exam attacks with each
  network alone, and a face one member calls the person can sit far from it under another, where the ensemble's
  mean lets it be. So each search round runs its starts once per member, on that member's identity term alone (the
  exam's attacker), and the hinge pushes every face until each member puts it past a margin of its own: that
  member's strangers' margin_quantile, measured on the pretrained generator when the attacker starts.
- **The photo's look** (`pixel_quantile` > 0, off by default): the training network's descriptor is not what an
  observer sees; an attacker with no identity term (pixel MSE + perceptual, `verify`'s pixel attacker) draws
  faces that network calls strangers and another network calls the person. So the search rounds also run
  `search_pixel` starts of that attacker, and every hinged latent is also pushed until its face is no closer to
  the photo, by that attacker's objective (on the face recoloured to the photo's mean colour), than this quantile of
  the pretrained generator's random faces (measured on the photo when the attacker starts; in the checkpoint).

The margin is a quantile of the strangers' distances under the training network, calibrated on the base
generator (guide/calibration.py), so it means the same for dlib and for ArcFace.
Randomness: the re-seeded latents come from stream(seed, iteration, RESEED_OFFSET) (engine/rng.py);
the pool and its optimiser state live in the checkpoint, so resumed runs repeat bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..engine.rng import stream
from ..engine.runtime import in_batches, synthesis_batch
from .calibration import stranger_pairs
from .invert import descend, inversion_loss, look_distance
from .losses import feature_distance, pair_terms

RESEED_OFFSET = 500_009  # keeps the attacker's random numbers apart from the loop's own per-iteration draws
PRESERVE_OFFSET = 700_001  # ... and the extra preservation latents' too
REPLAY_OFFSET = 900_007  # ... and the bank's draws
SEARCH_OFFSET = 1_100_009  # ... and the search rounds' starts
SCREEN_OFFSET = 1_300_021  # ... and the screens' latents
PIXEL_OFFSET = 1_500_007  # ... and the pixel attacker's search starts
LOOK_OFFSET = 1_700_021  # ... and the random faces the photo's look margin is measured on
LOOK_FACES = 256  # how many
MARGIN_OFFSET = 1_900_043  # ... and the random faces each member's own margin is measured on (apart)
MARGIN_FACES = 256  # how many: 128 x 128 stranger pairs


@dataclass(frozen=True)
class RobustConfig:
    """The robust mode's settings. Each default is the best measured on identities the tests never use; what was
    measured, and what the alternatives gave, is in docs/robust.md ("The settings and why")."""

    # -- the in-loop attacker ---------------------------------------------------------------------------
    pool: int = 8  # attacker latents, moved every iteration (4 let the attack come closer)
    steps: int = 2  # inversion steps of the pool per iteration
    lr: float = 0.05  # the attacker's step size (the inversion's)
    reseed_every: int = 12  # iterations between drawing one pool member again from the prior
    reseed: str = "oldest"  # which member: oldest (round robin) | farthest (from the person; measured worse)
    # -- the hinge on what it finds ---------------------------------------------------------------------
    margin_quantile: float = 0.075  # the margin: this quantile of the strangers' training-network distance (dlib:
    # 0.45; the median pushes the attacker's faces past most strangers and breaks 10-20% of other faces)
    margin: float | None = None  # absolute; None = resolved from margin_quantile by the job (in config.json)
    weight: float = 10.0  # of the hinge
    anchor: float = 0.0  # of a perceptual pull toward G_s at the attacker's latents (1.0 fights the hinge at w_u)
    # -- keeping everyone else --------------------------------------------------------------------------
    preserve: int = 4  # extra random latents per iteration held at G_s (GUIDE's pair terms)
    preserve_weight: float = 4.0  # of their mean: the weight keeps faces, not the number of rows
    # -- memory and search rounds (off by default: better on the development identity, worse held out) --
    replay: int = 0  # latents per iteration from the bank (where re-seeded members and search rounds ended), hinged
    bank_size: int = 64  # the bank keeps this many, the newest
    search_every: int = 0  # > 0: a fresh batched attack every this many iterations, its finds banked (needs replay)
    search_starts: int = 32  # prior draws per search round
    search_steps: int = 60  # inversion steps per search round
    screen: int = 0  # random latents per round looked at for the person's lookalikes (it would hinge strangers)
    # -- the photo's look (off by default: robust on the development identities at 10-17x GUIDE's time) ---
    search_pixel: int = 0  # starts per search round of the attacker with no identity term (pixel MSE + perceptual)
    pixel_quantile: float = 0.0  # > 0: also hinge each face's pixel + perceptual distance to the photo past this
    # quantile of the pretrained generator's random faces'
    recolour: bool = False  # the identity hinge also sees each face recoloured to the photo's mean colour
    # -- an ensemble's members apart (off by default; needs --identity a+b) ----------------------------------
    apart: bool = False  # search rounds attack with each member alone; the hinge holds each member to its own margin

    def validate(self) -> None:
        from ..engine.errors import GuideEngineError

        if self.pool < 0 or self.steps < 0 or self.reseed_every < 1:
            raise GuideEngineError("robust mode: pool >= 0, steps >= 0 and reseed_every >= 1")
        if self.pool == 0 and not self.search_every:
            raise GuideEngineError("robust mode: pool 0 leaves nothing to attack with; give search_every > 0")
        if self.reseed not in ("farthest", "oldest"):
            raise GuideEngineError(f"robust reseed {self.reseed!r}: farthest or oldest")
        if self.preserve_weight < 0:
            raise GuideEngineError(f"robust preserve_weight {self.preserve_weight}: must be >= 0")
        if not 0 < self.margin_quantile < 1:
            raise GuideEngineError(f"robust margin quantile {self.margin_quantile}: must lie in (0, 1)")
        if self.search_every < 0 or self.search_starts < 1 or self.search_steps < 1 or self.screen < 0:
            raise GuideEngineError("robust search: search_every >= 0, search_starts and search_steps >= 1, "
                                   "screen >= 0")
        if not 0 <= self.pixel_quantile < 1 or self.search_pixel < 0:
            raise GuideEngineError("robust look: pixel_quantile in [0, 1), search_pixel >= 0")
        if self.search_every and not (self.replay and self.bank_size):
            raise GuideEngineError("robust search: its finds go to the bank; give replay > 0 and bank_size > 0")


def _recoloured(images: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """Each image with its mean colour replaced by the photo's."""
    return images - images.mean(dim=(2, 3), keepdim=True) + photo.mean(dim=(2, 3), keepdim=True)


class Attacker:
    """The pool of attacker latents and its optimiser. `photo` (1, 3, H, W) is what the attacker holds."""

    def __init__(self, G_s, identity_net, photo: torch.Tensor, cfg: RobustConfig, seed: int):
        if cfg.margin is None:
            from ..engine.errors import GuideEngineError

            raise GuideEngineError("robust mode: the margin is not resolved; guide.config.resolve sets it from the "
                                   "training network's calibration, or give RobustConfig(margin=...)")
        self.net, self.cfg, self.seed = identity_net, cfg, seed
        self.photo = photo
        with torch.no_grad():
            self.feats_x, self.desc_x = identity_net.features(photo)
        self.sample = G_s.sample_latents
        w0 = G_s.sample_latents(cfg.pool, stream(seed, -1, RESEED_OFFSET))
        self.w = w0.detach().clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.w], lr=cfg.lr)
        self.bank = w0[:0].detach().clone()  # where re-seeded members ended: the defence's memory
        self.look_margin = self._look_margin(G_s) if cfg.pixel_quantile else None
        self.member_margins = self._member_margins(G_s) if cfg.apart else None

    def _member_margins(self, G_s) -> torch.Tensor:
        """(K, 1) each ensemble member's margin: the margin_quantile of its 1 - cos over the stranger pairs of
        MARGIN_FACES random faces of G_s (the two halves against each other), as `member_distances` measures it."""
        if not hasattr(self.net, "member_distances"):
            from ..engine.errors import GuideEngineError

            raise GuideEngineError(f"robust apart: {self.net.name} is one network; apart holds each member of an "
                                   "ensemble to its own margin (--identity a+b)")
        w = G_s.sample_latents(MARGIN_FACES, stream(self.seed, -1, MARGIN_OFFSET)).to(self.photo)
        with torch.no_grad():
            d = in_batches(lambda w: self.net.descriptors(G_s.synthesize(w)), w, synthesis_batch(G_s))
        pairs = self.net.member_distances(*stranger_pairs(d))
        return pairs.quantile(self.cfg.margin_quantile, dim=1, keepdim=True)

    def _look_margin(self, G_s) -> float:
        """The pixel_quantile of the pixel + perceptual distance to the photo of LOOK_FACES random faces of G_s."""
        w = G_s.sample_latents(LOOK_FACES, stream(self.seed, -1, LOOK_OFFSET)).to(self.photo)
        with torch.no_grad():
            look = in_batches(lambda w: self.look(G_s.synthesize(w)), w, synthesis_batch(G_s))
        return float(look.quantile(self.cfg.pixel_quantile))

    def look(self, images: torch.Tensor, feats: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(M, 3, H, W) => (M,) each face's pixel MSE + perceptual distance to the photo (the pixel attacker's
        objective), taken on the face recoloured to the photo's mean colour (`feats`: the training network's
        features of the recoloured faces, when already computed): a generator that tints every face would
        otherwise escape the hinge without changing a face (tried: pixel L1 2-3x GUIDE's, docs/robust.md)."""
        x = _recoloured(images, self.photo)
        return look_distance(x, self.net.features(x)[0] if feats is None else feats, self.photo, self.feats_x)[0]

    def hinged(self, images: torch.Tensor,
               desc: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(M, 3, H, W) => what the hinges act on: the training network's distance of each face to the photo (M,),
        how far each face lies inside its margin (M,): relu(margin - distance), or with cfg.apart the sum over the
        members of relu(own margin - own distance), and, with the look hinge on, each face's look (M,), else None.
        With cfg.recolour all are taken on the faces recoloured to the photo's mean colour (one feature pass);
        `desc`: the faces' own descriptors, if at hand."""
        feats = None
        if self.cfg.recolour:
            feats, desc = self.net.features(_recoloured(images, self.photo))
        elif desc is None:
            desc = self.net.descriptors(images)
        dist = self._to_photo(desc)
        if self.member_margins is None:
            inside = F.relu(self.cfg.margin - dist)
        else:
            own = self.net.member_distances(desc, self.desc_x.expand_as(desc))
            inside = F.relu(self.member_margins - own).sum(0)
        return dist, inside, None if self.look_margin is None else self.look(images, feats)

    def advance(self, G_u, it: int) -> None:
        """`steps` inversion steps of the pool through the current G_u (gradients to the pool only), and every
        `reseed_every` iterations one member (cfg.reseed) drawn again from the prior; and the search rounds."""
        if self.cfg.search_every and it % self.cfg.search_every == 0:
            self.search(G_u, it)
        if not self.cfg.pool:  # the search rounds alone
            return
        for _ in range(self.cfg.steps):
            loss, _ = inversion_loss(G_u, self.net, self.w, self.photo, self.feats_x, self.desc_x)
            (self.w.grad,) = torch.autograd.grad(loss.sum(), [self.w])
            self.opt.step()
        if (it + 1) % self.cfg.reseed_every == 0:
            with torch.no_grad():
                if self.cfg.reseed == "oldest":
                    k = ((it + 1) // self.cfg.reseed_every - 1) % self.cfg.pool
                else:
                    k = int(self.distance(G_u.synthesize(self.w)).argmax())
                rng = stream(self.seed, it, RESEED_OFFSET)
                if self.cfg.replay:
                    self.bank = torch.cat([self.bank, self.w[k:k + 1].detach()])[-self.cfg.bank_size:]
                self.w[k] = self.sample(1, rng)[0]
                for state in self.opt.state.values():  # the new member starts with a fresh Adam state
                    state["exp_avg"][k].zero_()
                    state["exp_avg_sq"][k].zero_()

    def search(self, G_u, it: int) -> int:
        """A search round: a fresh batched attack through the current G_u from new prior draws, and a screen of
        `screen` random latents as they are (the person's lookalikes, no descent); what ends under the margin
        joins the bank (or, with pixel_quantile, closer to the photo's look than its margin). => how many did."""
        starts = self.sample(self.cfg.search_starts, stream(self.seed, it, SEARCH_OFFSET)).to(self.photo)
        nets = list(self.net.members) if self.cfg.apart else [self.net]  # apart: the same starts, each member alone
        ends = torch.cat([descend(G_u, net, self.photo, starts, self.cfg.search_steps, self.cfg.lr, progress=False)
                          for net in nets])
        if self.cfg.search_pixel:
            starts = self.sample(self.cfg.search_pixel, stream(self.seed, it, PIXEL_OFFSET)).to(self.photo)
            ends = torch.cat([ends, descend(G_u, self.net, self.photo, starts, self.cfg.search_steps, self.cfg.lr,
                                            progress=False, identity_term=False)])
        if self.cfg.screen:
            ends = torch.cat([ends, self.sample(self.cfg.screen, stream(self.seed, it, SCREEN_OFFSET)).to(ends)])
        found = ends[in_batches(lambda w: self.near(G_u.synthesize(w)), ends, synthesis_batch(G_u))]
        self.bank = torch.cat([self.bank, found])[-self.cfg.bank_size:]
        return len(found)

    def near(self, images: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) => (M,) bool: inside the margin (or the look margin, when on): what the hinge would push."""
        _, inside, look = self.hinged(images)
        return inside > 0 if look is None else (inside > 0) | (look < self.look_margin)

    def distance(self, images: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) => (M,) the training network's distance of each face to the photo."""
        return self._to_photo(self.net.descriptors(images))

    def _to_photo(self, desc: torch.Tensor) -> torch.Tensor:
        """(M, D) descriptors => (M,) the training network's distance of each to the photo's."""
        return self.net.distance(desc, self.desc_x.expand_as(desc))

    def loss(self, G_u, G_s, it: int) -> dict[str, torch.Tensor]:
        """The loss on what the attacker found: hinge past the margin + anchor toward G_s at the same latents
        (the pool, and `replay` latents drawn from the bank), plus `preserve` extra random latents kept at G_s."""
        w = self.w.detach()
        if self.cfg.replay and len(self.bank):
            rng = stream(self.seed, it, REPLAY_OFFSET)
            w = torch.cat([w, self.bank[torch.randint(len(self.bank), (self.cfg.replay,), generator=rng)]])
        m = len(w)  # hinged rows
        if self.cfg.preserve:
            rng = stream(self.seed, it, PRESERVE_OFFSET)
            w = torch.cat([w, self.sample(self.cfg.preserve, rng)])
        if not len(w):  # a search-only attacker before its first find, keeping nothing: no loss yet
            return {"robust": torch.zeros((), device=w.device), "attack_dist": torch.tensor(float("nan"))}
        x_u = G_u.synthesize(w)
        feats_u, desc_u = self.net.features(x_u)
        dist, inside, look = self.hinged(x_u[:m], desc_u[:m])
        total = self.cfg.weight * inside.sum()
        if look is not None:
            total = total + self.cfg.weight * F.relu(self.look_margin - look).sum()
        first = 0 if self.cfg.anchor else m  # G_s's side is needed where something is kept close to it
        if first < len(w):
            with torch.no_grad():
                x_s = G_s.synthesize(w[first:])
                feats_s, desc_s = self.net.features(x_s)
        if self.cfg.anchor:
            total = total + self.cfg.anchor * feature_distance([f[:m] for f in feats_u], [f[:m] for f in feats_s]).sum()
            x_s, feats_s, desc_s = x_s[m:], [f[m:] for f in feats_s], desc_s[m:]
        if self.cfg.preserve:
            kept = pair_terms(self.net, x_u[m:], x_s, x_u[m:], x_s, source=([f[m:] for f in feats_u], desc_u[m:]),
                              target=(feats_s, desc_s))
            total = total + self.cfg.preserve_weight * kept.pair().mean()
        closest = dist.min().detach() if m else torch.tensor(float("nan"))  # nan: nothing to hinge yet
        return {"robust": total, "attack_dist": closest}

    def state_dict(self) -> dict:
        return {"w": self.w.detach().clone(), "opt": self.opt.state_dict(), "bank": self.bank.clone(),
                "look_margin": self.look_margin, "member_margins": self.member_margins}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.opt.load_state_dict(state["opt"])
        self.bank = state["bank"].clone()
        self.look_margin = state.get("look_margin", self.look_margin)  # measured at the start of the run, kept with it
        self.member_margins = state.get("member_margins", self.member_margins)
