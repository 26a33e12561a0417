"""The frozen teacher: an inference-only copy whose BatchNorm layers that follow a convolution are folded into it.

A teacher in eval mode computes ``bn(conv(x)) = gamma * (W * x - mean) / sqrt(var + eps) + beta``, which is one
convolution with weight ``W * s`` and bias ``beta - mean * s`` (``s = gamma / sqrt(var + eps)``, per output
channel): the BN's work disappears and the result is the same up to float rounding.

Which pairs are safe is found by tracing, not assumed from registration order: each piece of the teacher's
forward (stem, every block of ``stages()``, head) is traced with ``torch.fx`` on its own, and a BN is folded only
where, on every path through its piece, its input is the output of a ``Conv2d`` that nothing else reads, and each
of the two modules is called exactly once in the whole forward. Tracing per block, never across blocks, is what
makes this right for swapping-in: a block boundary is where the hybrid may put a student unit, so a conv at the
end of one block is never merged with a BN at the start of the next. Pre-activation blocks (WRN's ``bn1`` reads the
block input) and the WRN head's BN keep their BN; post-activation ResNets, their downsample branches, VGG's
conv-BN layers and torchvision's ResNets fold completely. A piece that cannot be traced keeps all its BNs.

The folded copy keeps the teacher's module structure (``forward_stem``, ``stages()``, ``forward_head``, the same
block objects), so it can be used anywhere the teacher is, ``HybridNet`` included. Its ``state_dict`` differs (the
folded BNs are gone, the convs gain a ``bias``): a frozen teacher is never saved, so nothing reads it back.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Iterator

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from iakd.models import ZooModel

__all__ = ["UnfoldedWarning", "BatchStatisticsNorm", "batch_statistics_teacher", "fold_batchnorm", "foldable_pairs",
           "freeze_teacher"]


class UnfoldedWarning(UserWarning):
    """A piece of the teacher could not be traced, so its BatchNorms stay (the fold is 10-16 % of IAKD's step)."""


# Each data-dependent branch (VGG pools by input size) doubles the paths to trace; beyond this, give up on the piece.
_MAX_PATHS = 64


class _BranchTracer(fx.Tracer):
    """Traces one path: ``decisions[i]`` answers the i-th data-dependent ``if`` (False once they run out).

    Convolutions and BatchNorms are leaves whatever their class, so they appear as ``call_module`` nodes.
    """

    def __init__(self, decisions: tuple[bool, ...]):
        super().__init__()
        self.decisions = decisions
        self.taken: list[bool] = []

    def to_bool(self, obj: fx.Proxy) -> bool:
        i = len(self.taken)
        self.taken.append(self.decisions[i] if i < len(self.decisions) else False)
        return self.taken[-1]

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(m, module_qualified_name)


def _trace_all_paths(root: nn.Module) -> Iterator[fx.Graph]:
    """Every path through ``root.forward`` as a graph: each branch on a traced value is taken both ways."""
    pending: list[tuple[bool, ...]] = [()]
    traced = 0
    while pending:
        decisions = pending.pop()
        traced += 1
        if traced > _MAX_PATHS:
            raise RuntimeError(f"more than {_MAX_PATHS} paths")
        tracer = _BranchTracer(decisions)
        graph = tracer.trace(root)
        # Branches past the given decisions went the default way (False); queue each of them taken the other way.
        pending += [tuple(tracer.taken[:i]) + (True,) for i in range(len(decisions), len(tracer.taken))]
        yield graph


class _Piece(nn.Module):
    """Calls one of the model's anatomy methods (``forward_stem`` / ``forward_head``) so that it can be traced."""

    def __init__(self, model: ZooModel, method: str):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x)


def _pieces(model: ZooModel) -> list[tuple[str, nn.Module]]:
    """The pieces whose calls together make up ``model.forward``, named: stem, every block in order, head."""
    blocks = [(f"stage {s + 1} block {b + 1}", block) for s, stage in enumerate(model.stages())
              for b, block in enumerate(stage)]
    return [("stem", _Piece(model, "forward_stem")), *blocks, ("head", _Piece(model, "forward_head"))]


def _conv_bn_pairs(root: nn.Module, graph: fx.Graph) -> tuple[Counter[int], set[tuple[int, int]], dict[int, nn.Module]]:
    """Module calls on this path (by id), the (conv, bn) pairs where the BN reads a conv output nothing else reads."""
    calls: Counter[int] = Counter()
    pairs: set[tuple[int, int]] = set()
    by_id: dict[int, nn.Module] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        module = root.get_submodule(node.target)
        calls[id(module)] += 1
        by_id[id(module)] = module
        source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if (isinstance(module, nn.BatchNorm2d) and isinstance(source, fx.Node) and source.op == "call_module"
                and isinstance(root.get_submodule(source.target), nn.Conv2d) and len(source.users) == 1):
            pairs.add((id(root.get_submodule(source.target)), id(module)))
    return calls, pairs, by_id


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    # Exact classes only: a subclass (weight standardisation, a parametrisation, SyncBatchNorm) may compute
    # something else from the same tensors. Folding uses the running statistics, so they must exist.
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None and conv.out_channels == bn.num_features)


def foldable_pairs(model: ZooModel) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The (conv, bn) pairs of ``model`` that :func:`fold_batchnorm` folds, in forward order."""
    calls: Counter[int] = Counter()
    candidates: list[tuple[int, int]] = []
    modules: dict[int, nn.Module] = {}
    excluded: set[int] = set()
    for name, piece in _pieces(model):
        try:
            paths = [_conv_bn_pairs(piece, graph) for graph in _trace_all_paths(piece)]
        except Exception as error:  # fx fails in many ways (iteration over a tensor, unregistered modules...)
            excluded.update(id(m) for m in piece.modules())
            warnings.warn(f"frozen teacher: {type(model).__name__}'s {name} cannot be traced ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}); its BatchNorms are not folded "
                          "(same logits, a slower step)", UnfoldedWarning, stacklevel=2)
            continue
        piece_calls: Counter[int] = Counter()
        for path_calls, _, by_id in paths:
            modules.update(by_id)
            for key, n in path_calls.items():
                piece_calls[key] = max(piece_calls[key], n)
        calls.update(piece_calls)
        # A pair holds for the piece if every path either makes it or calls neither of its modules.
        seen = {pair for _, path_pairs, _ in paths for pair in path_pairs}
        order = list(modules)
        candidates += [pair for pair in sorted(seen, key=lambda pair: order.index(pair[0]))
                       if all(pair in path_pairs or (pair[0] not in path_calls and pair[1] not in path_calls)
                              for path_calls, path_pairs, _ in paths)]
    return [(modules[c], modules[b]) for c, b in candidates
            if calls[c] == 1 and calls[b] == 1 and not {c, b} & excluded and _foldable(modules[c], modules[b])]


def _double(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().double()


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    # torch's own fusion arithmetic, in float64: the folded weights then differ from the exact ones by one rounding.
    weight, bias = fuse_conv_bn_weights(_double(conv.weight), _double(conv.bias), _double(bn.running_mean),
                                        _double(bn.running_var), bn.eps, _double(bn.weight), _double(bn.bias))
    conv.weight.copy_(weight.to(conv.weight.dtype))
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)


def _replace(roots: list[nn.Module], old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is a child, under every root (VGG's layer views hold its BNs unregistered)."""
    for root in roots:
        for parent in root.modules():
            for name, child in list(parent.named_children()):
                if child is old:
                    setattr(parent, name, new)


def fold_batchnorm(model: ZooModel) -> int:
    """Fold, in place, every BatchNorm2d that directly follows a Conv2d (see the module docstring) into that conv
    and put ``nn.Identity`` in its place; returns the number folded. Exact only in eval mode (running statistics)."""
    pairs = foldable_pairs(model)
    roots = [model, *[block for stage in model.stages() for block in stage]]
    for conv, bn in pairs:
        _fold(conv, bn)
        _replace(roots, bn, nn.Identity().train(bn.training))
    return len(pairs)


def freeze_teacher(model: ZooModel) -> ZooModel:
    """A frozen, inference-only copy of a teacher: eval mode, no gradients, BatchNorm folded into convolutions.

    The argument is left untouched. The copy computes the same logits up to float rounding and keeps the module
    structure, so it goes wherever the teacher goes (``methods.build``, ``HybridNet``). Its ``state_dict`` keys
    differ from the teacher's (folded BNs removed): it is never saved. BNs that are not folded (pre-activation
    ones) stay; the methods keep the teacher in eval mode, so their statistics never change.
    """
    frozen = copy.deepcopy(model).eval()
    fold_batchnorm(frozen)
    return frozen.eval().requires_grad_(False)


class BatchStatisticsNorm(nn.Module):
    """A teacher's BatchNorm2d that normalises with the batch's own statistics: its affine parameters are kept
    (frozen, as buffers), its running statistics are neither read nor updated.

    Inside a hybrid, a teacher unit fed by a student part sees activations whose statistics are not the
    teacher's own; normalising with the batch's statistics lets it adapt to what the student feeds it, while
    the teacher's weights and running statistics stay exactly as trained.
    """

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.num_features, self.eps = bn.num_features, bn.eps
        self.register_buffer("weight", None if bn.weight is None else bn.weight.detach().clone())
        self.register_buffer("bias", None if bn.bias is None else bn.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)


def batch_statistics_teacher(model: ZooModel) -> ZooModel:
    """A frozen copy of a teacher whose BatchNorm layers normalise with batch statistics
    (:class:`BatchStatisticsNorm`); the argument is left untouched, and the copy keeps the module structure so
    that ``HybridNet`` can cut it into units. Its weights never change: there is nothing left to train."""
    copied = copy.deepcopy(model).eval()
    roots = [copied, *[block for stage in copied.stages() for block in stage]]
    bns = {id(m): m for root in roots for m in root.modules() if isinstance(m, nn.BatchNorm2d)}
    for bn in bns.values():
        _replace(roots, bn, BatchStatisticsNorm(bn))
    return copied.requires_grad_(False)
