"""The unlearning iteration as one CUDA graph (`unlearn --cuda-graph`).

On the default generator an iteration is launch-bound: tens of small kernels for 5 images of 64 px, each
launched from Python. Captured once as a CUDA graph (forward, backward and Adam's step), an iteration is
one replay. What a graph needs, and where the loop gives it:
- fixed addresses: the iteration's latents and row identities are copied into buffers the graph reads;
- no host synchronisation inside: the losses pick rows by role with masks and slices, never with a boolean
  index (guide/losses.py, guide/unlearn.py; tests/guide/test_cuda_graph.py traces the step to check it);
- an optimizer whose step count lives on the device: Adam(capturable=True);
- warm-up first (Triton compiles, cuDNN picks its algorithms, Adam creates its state): the first WARMUP
  iterations run eagerly on a side stream, the next one is captured, and each one from there is a replay.
  The warm-up iterations are real ones, so a run computes the same iterations with or without the graph.
"""
from __future__ import annotations

import dataclasses

import torch

WARMUP = 3  # eager iterations before the capture


def refusal(cfg) -> str | None:
    """Why an unlearning config cannot run its iteration as a CUDA graph (one line), or None. The device,
    the generator's camera and torch.distributed are checked where they are known (guide/unlearn.py)."""
    if cfg.reference_loop:
        return "--reference-loop keeps the official code's launch per latent"
    if cfg.micro_batch:
        return "--micro-batch runs a backward per chunk; the graph holds the whole batch at once"
    if cfg.robust is not None:
        return "--robust's attackers change what they search and hinge from one iteration to the next"
    if cfg.precision != "fp32":
        return f"--precision {cfg.precision}: autocast's cache of weight casts cannot live inside a graph"
    return None


def refusal_at_run(device: str, has_camera: bool, distributed: bool) -> str | None:
    """What only the run knows: the device, a generator with a camera, torch.distributed."""
    if torch.device(device).type != "cuda":
        return f"CUDA graphs need --device cuda (this run: {device})"
    if has_camera:
        return "a generator with a camera (EG3D) draws a view and random rays each iteration"
    if distributed:
        return "under torch.distributed the gradients' all-reduce runs outside the graph"
    return None


class GraphedStep:
    """`step(batch)` => the named losses of one forward (guide/unlearn.py: step_batched); with `opt` over
    `params`, a call runs the whole iteration on `batch`: forward, backward and the optimizer's step =>
    the detached losses. The optimizer must be capturable (Adam(capturable=True))."""

    def __init__(self, step, opt: torch.optim.Optimizer):
        self.step, self.opt = step, opt
        self.warmed = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static = None  # the batch the graph reads; each call copies its own latents and identities into it
        self.names: list[str] = []
        self.values: torch.Tensor | None = None  # (len(names),) the losses the last replay computed

    def _iteration(self, batch) -> dict[str, torch.Tensor]:
        self.opt.zero_grad(set_to_none=True)  # in the capture: the backward below writes gradients the graph owns
        losses = self.step(batch)
        losses["total"].backward()
        self.opt.step()
        return {k: v.detach() for k, v in losses.items()}

    def __call__(self, batch) -> dict[str, torch.Tensor]:
        if self.graph is None and self.warmed < WARMUP:
            self.warmed += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                losses = self._iteration(batch)
            torch.cuda.current_stream().wait_stream(side)
            return losses
        if self.graph is None:
            self._capture(batch)
        self.static.lat_u.copy_(batch.lat_u)
        self.static.lat_t.copy_(batch.lat_t)
        self.static.identity.copy_(batch.identity)
        self.graph.replay()
        return dict(zip(self.names, self.values.clone().unbind()))

    def _capture(self, batch) -> None:
        device = batch.lat_u.device
        self.static = dataclasses.replace(batch, lat_u=batch.lat_u.clone(), lat_t=batch.lat_t.clone(),
                                          role=batch.role.to(device), identity=batch.identity.to(device))
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            losses = self._iteration(self.static)
            self.names = list(losses)
            self.values = torch.stack([losses[k].float() for k in self.names])
