"""One training step (forward, summed loss, backward, SGD update) and the epoch's running totals on the device.

Two ways to take the step, one result:

- ``EagerStep``: the method's ``forward_train``, ``loss.backward()`` and ``torch.optim.SGD.step()`` as written.
- ``GraphedStep``: the same step as a fixed computation on static buffers, with the SGD update written with
  ``torch._foreach`` ops reading the learning rate from a device tensor. On CUDA it is captured once per
  (swap mask, batch shape) as a CUDA graph and replayed: one launch per step instead of hundreds, which is what
  a small network at batch 64 waits on. The first time a mask occurs it runs uncaptured (that also creates the
  momentum buffers the capture needs); its second occurrence is captured. Past ``max_graphs`` graphs (block
  granularity has 2^units masks) new masks run uncaptured. Captured and uncaptured runs execute the same
  kernels, so a run, and its exact resume, does not depend on which steps were replayed. On the CPU nothing is
  captured (``capture=False``): the same code runs eagerly, which is how the tests check it.

Neither reads anything back to the host: losses, the accuracy count and the divergence check accumulate in
``EpochTotals`` (updated in place, so a graph can hold the update) and are read once per epoch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from iakd.methods import Method

__all__ = ["EpochTotals", "EagerStep", "GraphedStep", "Compute", "make_step"]

Key = tuple[tuple[bool, ...] | None, tuple[int, ...]]


class Compute:
    """How the step computes, apart from what: bf16 autocast of the forward passes and the channels_last layout.

    ``autocast()`` wraps a forward pass; ``prepare(images)`` puts a batch in the model's layout. With both off
    (the default) they do nothing.
    """

    def __init__(self, device: torch.device, *, bf16: bool = False, channels_last: bool = False):
        self.device, self.bf16, self.channels_last = device, bf16, channels_last

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        # No cast cache: a CUDA graph must recompute the casts of weights that the optimizer changes in place.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def apply(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(memory_format=torch.channels_last) if self.channels_last else module


class EpochTotals:
    """The epoch's loss sums (float64, each term times the batch size), correct predictions, and the divergence
    flag with the first non-finite loss, on the device. ``add`` only updates in place; ``read`` is the one
    synchronisation per epoch."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.diverged = torch.zeros((), dtype=torch.bool, device=device)
        self.first_bad = torch.zeros((), device=device)

    def reset(self) -> None:
        for t in (*self.sums.values(), self.correct, self.diverged, self.first_bad):
            t.zero_()

    def add(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor,
            losses: dict[str, torch.Tensor]) -> None:
        loss = loss.detach()
        bad = ~torch.isfinite(loss)
        self.first_bad.copy_(torch.where(bad & ~self.diverged, loss.float(), self.first_bad))
        self.diverged |= bad
        self.correct += (logits.detach().argmax(1) == labels).sum()
        n = labels.shape[0]
        for name, value in (("train_loss", loss), *losses.items()):
            if name not in self.sums:  # the first step names them (never inside a capture: see GraphedStep)
                self.sums[name] = torch.zeros((), dtype=torch.float64, device=self.device)
            self.sums[name] += value.detach().double() * n

    def read(self, seen: int) -> tuple[dict[str, float], float | None]:
        """(per-image means of the loss terms and ``train_acc`` in percent, the first non-finite loss or None)."""
        if self.diverged.item():
            return {}, self.first_bad.item()
        metrics = {name: value.item() / seen for name, value in self.sums.items()}
        metrics["train_acc"] = 100.0 * self.correct.item() / seen
        return metrics, None


class EagerStep:
    """The step as written: ``forward_train``, backward, ``optimizer.step()``."""

    def __init__(self, method: Method, optimizer: torch.optim.Optimizer, totals: EpochTotals, compute: Compute):
        self.method, self.optimizer, self.totals, self.compute = method, optimizer, totals, compute

    def set_lr(self) -> None:
        """Nothing to do: ``optimizer.step()`` reads the learning rate each step."""

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, swap: tuple[bool, ...] | None) -> None:
        with self.compute.autocast():
            logits, losses = self.method.forward_train(self.compute.prepare(images), labels, swap)
        loss = sum(losses.values())
        self.totals.add(logits, labels, loss, losses)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


@torch.no_grad()
def sgd_update(optimizer: torch.optim.SGD, lrs: list[torch.Tensor]) -> None:
    """``torch.optim.SGD.step()`` (weight decay, momentum with dampening, Nesterov) with each group's learning
    rate read from a device tensor, so that a captured update follows the schedule. Parameters without a
    gradient are skipped and momentum buffers are created on first use, as torch does; the buffers live in
    ``optimizer.state``, so checkpoints are the optimizer's own. Equal to torch's step up to rounding (the last
    operation is ``p - lr * g`` instead of ``p + (-lr) * g``)."""
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        if group.get("maximize") or group.get("differentiable"):
            raise ValueError("sgd_update: maximize and differentiable SGD are not supported")
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        weight_decay, momentum = group["weight_decay"], group["momentum"]
        if weight_decay != 0:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        if momentum != 0:
            states = [optimizer.state[p] for p in params]
            if all("momentum_buffer" in s and s["momentum_buffer"] is not None for s in states):
                bufs = [s["momentum_buffer"] for s in states]
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
            else:  # first use of some buffers: never inside a capture (their first step runs uncaptured)
                bufs = []
                for s, g in zip(states, grads, strict=True):
                    buf = s.get("momentum_buffer")
                    if buf is None:
                        buf = s["momentum_buffer"] = g.detach().clone()
                    else:
                        buf.mul_(momentum).add_(g, alpha=1 - group["dampening"])
                    bufs.append(buf)
            grads = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
        torch._foreach_sub_(params, torch._foreach_mul(grads, lr))


class GraphedStep:
    """The step on static buffers, with the SGD update from ``sgd_update``; captured as CUDA graphs when
    ``capture`` (one per swap mask and batch shape, at most ``max_graphs``, all in one memory pool), run
    eagerly otherwise. Call ``set_lr()`` after the learning-rate scheduler steps."""

    def __init__(self, method: Method, optimizer: torch.optim.SGD, totals: EpochTotals, compute: Compute, *,
                 capture: bool, max_graphs: int = 64):
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(f"GraphedStep needs torch.optim.SGD, got {type(optimizer).__name__}")
        self.method, self.optimizer, self.totals, self.compute = method, optimizer, totals, compute
        self.capture, self.max_graphs = capture, max_graphs
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        device = totals.device
        self.lrs = [torch.tensor(float(g["lr"]), device=device) for g in optimizer.param_groups]
        self.graphs: dict[Key, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.ran: set[Key] = set()  # keys that have run uncaptured: the next occurrence may be captured
        if capture:
            self.stream = torch.cuda.Stream(device)
            self.pool = torch.cuda.graph_pool_handle()

    @property
    def num_graphs(self) -> int:
        return len(self.graphs)

    def set_lr(self) -> None:
        for lr, group in zip(self.lrs, self.optimizer.param_groups, strict=True):
            lr.fill_(float(group["lr"]))

    def _body(self, images: torch.Tensor, labels: torch.Tensor, swap: tuple[bool, ...] | None) -> None:
        for p in self.params:  # backward then assigns fresh gradients: what zero_grad(set_to_none=True) gives
            p.grad = None
        with self.compute.autocast():
            logits, losses = self.method.forward_train(images, labels, swap)
        loss = sum(losses.values())
        self.totals.add(logits, labels, loss, losses)
        loss.backward()
        sgd_update(self.optimizer, self.lrs)

    @contextlib.contextmanager
    def _side_stream(self) -> Iterator[None]:
        """Uncaptured work on the capture stream (warm-up before capture must not run on the default stream)."""
        if not self.capture:
            yield
            return
        current = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            yield
        current.wait_stream(self.stream)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, swap: tuple[bool, ...] | None) -> None:
        images = self.compute.prepare(images)
        key = (swap, tuple(images.shape))
        entry = self.graphs.get(key)
        if entry is None and self.capture and key in self.ran and len(self.graphs) < self.max_graphs:
            entry = self.graphs[key] = self._capture(images, labels, swap)
        if entry is None:
            with self._side_stream():
                self._body(images, labels, swap)
            self.ran.add(key)
            return
        graph, static_images, static_labels = entry
        static_images.copy_(images)
        static_labels.copy_(labels)
        graph.replay()

    def _capture(self, images: torch.Tensor, labels: torch.Tensor,
                 swap: tuple[bool, ...] | None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static_images, static_labels = images.clone(), labels.clone()
        graph = torch.cuda.CUDAGraph()
        # Everything that lives from one replay to the next (weights, momentum buffers, BatchNorm statistics,
        # totals, learning rates) was allocated before; the pool holds only each graph's temporaries and
        # gradients, so the graphs can share it: they never run at the same time.
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            self._body(static_images, static_labels, swap)
        for p in self.params:  # the pool's gradients are the graphs' business now
            p.grad = None
        return graph, static_images, static_labels


def make_step(method: Method, optimizer: torch.optim.Optimizer, totals: EpochTotals, compute: Compute, *,
              cuda_graphs: bool) -> EagerStep | GraphedStep:
    """The graphed step on CUDA when ``cuda_graphs``; the eager step otherwise (on the CPU always)."""
    if cuda_graphs and totals.device.type == "cuda":
        return GraphedStep(method, optimizer, totals, compute, capture=True)
    return EagerStep(method, optimizer, totals, compute)
