"""Training methods in one shape: ``forward_train(image, target, swap) -> (logits, {"loss_name": tensor})``.

The engine sums the loss dict and steps the optimizer over ``trainable_parameters()``; ``forward(image)`` is
always the pure student (evaluation). A frozen teacher stays in eval mode whatever ``train()`` is called with.

``METHODS`` is the one registry of methods: name -> class, each class stating what it needs (a teacher, the
swap schedule), whether its loss has a KD term, and its default loss weights. Config validation, the search
space, the search's tags and the engine all ask it instead of restating these facts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from iakd.hybrid import DEFAULT_MIXING, DEFAULT_TEACHER_BN, MIXINGS, HybridNet
from iakd.losses import kd_loss
from iakd.models import ZooModel
from iakd.units import Granularity

__all__ = ["METHODS", "KD_TARGETS", "Method", "CE", "KD", "IAKD", "IAKDKD", "build", "kd_methods", "swap_methods"]

# The logits IAKD+KD's KD term may act on (``IAKD(kd_on=...)``).
KD_TARGETS: tuple[str, ...] = ("hybrid", "student")


class Method(nn.Module):
    """A student, an optional frozen teacher, and the losses that train the student.

    Class attributes state what a method is: ``uses_teacher``, ``uses_swap`` (trains inside the hybrid, reads
    the swap schedule), ``has_kd_term`` (adds ``kd_weight * T^2 KL(teacher || logits)``), and the default
    ``ce_weight`` / ``kd_weight`` an unset config value takes.
    """

    uses_teacher = False
    uses_swap = False
    has_kd_term = False
    default_ce_weight = 1.0
    default_kd_weight = 0.0

    def __init__(self, student: ZooModel, teacher: ZooModel | None = None):
        super().__init__()
        self.student = student
        self.teacher = None if teacher is None else teacher.requires_grad_(False).eval()

    @classmethod
    def _weights(cls, ce_weight: float | None, kd_weight: float | None) -> tuple[float, float]:
        """The loss weights, an unset one taking the class's default (its one home)."""
        return (cls.default_ce_weight if ce_weight is None else ce_weight,
                cls.default_kd_weight if kd_weight is None else kd_weight)

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.student(image)

    def draw_swap(self) -> tuple[bool, ...] | None:
        """The step's random choice of units to swap in (None for methods that do not swap), drawn on the host
        before the step so that the step itself is a fixed computation given it (a CUDA graph per mask)."""
        return None

    def forward_train(self, image: torch.Tensor, target: torch.Tensor,
                      swap: tuple[bool, ...] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and named loss terms of one training step; ``swap`` is the mask from ``draw_swap`` (drawn
        here when None by methods that swap)."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.student.parameters())

    def frozen_modules(self) -> list[nn.Module]:
        """The modules this method never trains (the teacher, and any copy of it): left out of its state."""
        return [] if self.teacher is None else [self.teacher]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything this method trains (student, connectors), without the frozen teacher; each tensor once."""
        seen = {id(t) for frozen in self.frozen_modules() for t in frozen.state_dict(keep_vars=True).values()}
        state = {}
        for key, value in self.state_dict(keep_vars=True).items():
            if id(value) not in seen:  # the hybrid holds the student too: keep its first name only
                seen.add(id(value))
                state[key] = value.detach()
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise KeyError(f"trainable state does not match: missing {missing[:3]}, unexpected {extra[:3]}")
        self.load_state_dict(state, strict=False)


class CE(Method):
    """The student alone, on cross-entropy."""

    def __init__(self, student: ZooModel, teacher: ZooModel | None = None, **_: object):
        super().__init__(student, None)  # no teacher: the baseline never pays for one

    def forward_train(self, image, target, swap=None):
        logits = self.student(image)
        return logits, {"loss_ce": F.cross_entropy(logits, target)}


class KD(Method):
    """Hinton KD: ce_weight * CE + kd_weight * T^2 KL(teacher || student); the teacher runs without a graph."""

    uses_teacher = True
    has_kd_term = True
    default_ce_weight = 0.1  # RepDistiller / mdistiller
    default_kd_weight = 0.9

    def __init__(self, student: ZooModel, teacher: ZooModel, *, ce_weight: float | None = None,
                 kd_weight: float | None = None, temperature: float = 4.0, **_: object):
        super().__init__(student, teacher)
        self.ce_weight, self.kd_weight = self._weights(ce_weight, kd_weight)
        self.temperature = temperature

    def forward_train(self, image, target, swap=None):
        logits = self.student(image)
        with torch.no_grad():
            logits_teacher = self.teacher(image)
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, target),
            "loss_kd": self.kd_weight * kd_loss(logits, logits_teacher, self.temperature),
        }


class IAKD(Method):
    """Swapping-in: each step the student trains inside a hybrid whose units are drawn from student or teacher.

    ``swap_prob`` (one probability, or one per unit) is set by the engine from the schedule before each step;
    the mask drawn for the step is kept in ``last_swap``. The levers (docs/iakd-levers.md):

    - ``mixing``: ``bernoulli`` draws each unit from student or teacher with probability p; ``blend`` runs both
      and passes on (1 - a) x student + a x teacher with a = p (no draw; the mask marks the units with a > 0).
    - ``hybrid_weight`` w: 0 trains the hybrid on the method's loss (the paper's IAKD); w > 0 makes the hybrid an
      auxiliary path: the pure student carries the method's loss, and w x CE on the hybrid's logits is added
      (``loss_hybrid``; 0 on a step whose mask swaps nothing, where the hybrid is the student itself).
    - ``kd_on``: with ``kd_weight > 0`` (IAKD+KD), the logits that ``kd_weight * T^2 KL(teacher || logits)``
      acts on: ``hybrid`` or ``student``; None: where the method's loss is (the hybrid without an auxiliary path,
      the student with one). The full teacher's logits are computed once per step, without a graph.
    """

    uses_teacher = True
    uses_swap = True

    def __init__(
        self,
        student: ZooModel,
        teacher: ZooModel,
        *,
        granularity: Granularity = "stage",
        teacher_bn: str = DEFAULT_TEACHER_BN,
        ce_weight: float | None = None,
        kd_weight: float | None = None,
        temperature: float = 4.0,
        swap_seed: int = 0,
        input_size: int | None = None,
        pair: str = "teacher -> student",
        mixing: str = DEFAULT_MIXING,
        hybrid_weight: float = 0.0,
        kd_on: str | None = None,
    ):
        super().__init__(student, teacher)
        if mixing not in MIXINGS:
            raise ValueError(f"mixing: {mixing!r} is not one of {', '.join(MIXINGS)}")
        if kd_on not in (*KD_TARGETS, None):
            raise ValueError(f"kd_on: {kd_on!r} is not one of {', '.join(KD_TARGETS)} or None")
        if hybrid_weight < 0:
            raise ValueError(f"hybrid_weight: {hybrid_weight} must be >= 0")
        self.hybrid = HybridNet(student, teacher, granularity, teacher_bn=teacher_bn, input_size=input_size, pair=pair)
        self.ce_weight, self.kd_weight = self._weights(ce_weight, kd_weight)
        self.temperature = temperature
        self.mixing, self.hybrid_weight = mixing, hybrid_weight
        self.kd_on = kd_on or ("student" if hybrid_weight > 0 else "hybrid")
        self.swap_generator = torch.Generator().manual_seed(swap_seed)
        # blend's weights live on the device (a captured step reads them there); not part of the state
        self.register_buffer("blend_weights", torch.zeros(self.hybrid.num_units), persistent=False)
        self._swap_prob: float | Sequence[float] = 0.0
        self.last_swap: tuple[bool, ...] = (False,) * self.hybrid.num_units

    @property
    def num_units(self) -> int:
        return self.hybrid.num_units

    @property
    def swap_prob(self) -> float | Sequence[float]:
        return self._swap_prob

    @swap_prob.setter
    def swap_prob(self, prob: float | Sequence[float]) -> None:
        self._swap_prob = prob
        if self.mixing == "blend":
            self.blend_weights.copy_(torch.as_tensor(prob, dtype=torch.float32).expand(self.num_units))

    def draw_swap(self) -> tuple[bool, ...]:
        if self.mixing == "blend":  # no draw: every unit with a weight above 0 blends
            return tuple(bool(p > 0) for p in torch.as_tensor(self._swap_prob, dtype=torch.float64).expand(
                self.num_units).tolist())
        return self.hybrid.draw_swap(self._swap_prob, self.swap_generator)

    def forward_train(self, image, target, swap=None):
        self.last_swap = self.draw_swap() if swap is None else tuple(swap)
        hybrid = any(self.last_swap)  # a mask that swaps nothing is the pure student
        logits = {"hybrid": self.hybrid(image, self.last_swap, self.blend_weights if self.mixing == "blend" else None)}
        if not hybrid:
            logits["student"] = logits["hybrid"]
        main = "student" if self.hybrid_weight > 0 else "hybrid"
        needed = {main} | ({self.kd_on} if self.kd_weight > 0 else set())
        if "student" in needed and "student" not in logits:
            logits["student"] = self.student(image)
        losses = {"loss_ce": self.ce_weight * F.cross_entropy(logits[main], target)}
        if self.kd_weight > 0:
            with torch.no_grad():
                logits_teacher = self.teacher(image)
            losses["loss_kd"] = self.kd_weight * kd_loss(logits[self.kd_on], logits_teacher, self.temperature)
        if self.hybrid_weight > 0:
            losses["loss_hybrid"] = (self.hybrid_weight * F.cross_entropy(logits["hybrid"], target) if hybrid
                                     else logits["hybrid"].new_zeros(()))
        return logits[main], losses

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.hybrid.trainable_parameters()

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher, self.hybrid.teacher]


class IAKDKD(IAKD):
    """IAKD plus Hinton's KD term on the hybrid's logits (IAKD+KD)."""

    has_kd_term = True
    default_kd_weight = 0.9


METHODS: dict[str, type[Method]] = {"ce": CE, "kd": KD, "iakd": IAKD, "iakd+kd": IAKDKD}


def swap_methods() -> frozenset[str]:
    """The names of the methods that train inside the hybrid (the ones the swap levers apply to)."""
    return frozenset(name for name, cls in METHODS.items() if cls.uses_swap)


def kd_methods() -> frozenset[str]:
    """The names of the methods whose loss has a KD term (the ones that read ``method.kd_weight``)."""
    return frozenset(name for name, cls in METHODS.items() if cls.has_kd_term)


def build(
    name: str,
    student: ZooModel,
    teacher: ZooModel | None = None,
    *,
    granularity: Granularity = "stage",
    teacher_bn: str = DEFAULT_TEACHER_BN,
    ce_weight: float | None = None,
    kd_weight: float | None = None,
    temperature: float = 4.0,
    swap_seed: int = 0,
    input_size: int | None = None,
    pair: str = "teacher -> student",
    **levers: object,
) -> Method:
    """Build a method by name; unset weights take the method's defaults (kd: 0.1 / 0.9, iakd+kd: 1 / 0.9).
    ``teacher_bn`` is how swapped-in teacher units normalise (``iakd.hybrid.TEACHER_BN_MODES``; methods that do
    not swap ignore it).

    A method without a KD term refuses a positive ``kd_weight``, and one with a KD term refuses 0: the name
    always says what is trained. ``levers`` (``mixing``, ``hybrid_weight``, ``kd_on``) go to the methods that swap
    (:class:`IAKD`); a method that does not swap refuses them.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    cls = METHODS[name]
    if cls.uses_teacher and teacher is None:
        raise ValueError(f"method {name!r} needs a teacher")
    ce_weight, kd_weight = cls._weights(ce_weight, kd_weight)
    if (kd_weight > 0) != cls.has_kd_term:
        raise ValueError(f"method {name!r} with kd_weight {kd_weight}: "
                         + ("it has no KD term" if not cls.has_kd_term else "its KD term needs kd_weight > 0"))
    if levers and not cls.uses_swap:
        raise ValueError(f"method {name!r} does not swap: {', '.join(sorted(levers))} do not apply")
    return cls(student, teacher if cls.uses_teacher else None, granularity=granularity, teacher_bn=teacher_bn,
               ce_weight=ce_weight, kd_weight=kd_weight,
               temperature=temperature, swap_seed=swap_seed, input_size=input_size, pair=pair, **levers)
