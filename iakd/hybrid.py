"""The hybrid network: the student's stem and head around a per-step mix of student and teacher units."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from iakd.frozen import batch_statistics_teacher
from iakd.models import ZooModel
from iakd.units import Granularity, partition

__all__ = ["HybridNet", "TEACHER_BN_MODES", "DEFAULT_TEACHER_BN", "MIXINGS", "DEFAULT_MIXING"]

# How a swapped-in teacher unit normalises: ``frozen`` with its running statistics (exact teacher arithmetic, a
# student-fed input arrives with other statistics than the teacher's own), ``batch`` with the batch's statistics
# and its frozen affine parameters (it adapts to what the student feeds it). Its weights never change in either.
TEACHER_BN_MODES: tuple[str, ...] = ("frozen", "batch")
# The default everywhere (HybridNet, iakd.methods, the run config): batch, the mode under which IAKD teaches
# (docs/iakd-diagnosis.md).
DEFAULT_TEACHER_BN = "batch"

# How a unit's two versions are mixed: ``bernoulli`` runs one of them, drawn per step (the swap mask), ``blend``
# runs both and passes on (1 - a) x student + a x teacher with a deterministic weight a per unit (no draw).
MIXINGS: tuple[str, ...] = ("bernoulli", "blend")
DEFAULT_MIXING = "bernoulli"  # the paper's swapping-in


def _connector(in_ch: int, out_ch: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))


class HybridNet(nn.Module):
    """Student and frozen teacher cut into aligned units; ``forward(x, swap)`` runs unit i of the teacher
    where ``swap[i]`` is True and of the student elsewhere; ``swap=None`` is the pure student.

    Where the two widths differ at a unit boundary, a connector (1x1 conv + BN) maps the student's width to the
    teacher's before a teacher unit that follows a student part (``to_teacher[i]``, before unit i), and back after
    a teacher unit that a student part or the head follows (``to_student[i]``, before unit i, or the head at
    i = num_units). Connectors train with the student and play no part in the pure student.

    ``teacher_bn`` (one of ``TEACHER_BN_MODES``) says how the teacher's units normalise inside the hybrid; with
    ``batch`` the hybrid holds its own copy of the teacher with :class:`~iakd.frozen.BatchStatisticsNorm` layers
    (pass a teacher whose BatchNorm layers are not folded), and the given teacher is left untouched.
    """

    def __init__(self, student: ZooModel, teacher: ZooModel, granularity: Granularity = "stage", *,
                 teacher_bn: str = DEFAULT_TEACHER_BN, input_size: int | None = None, pair: str = "teacher -> student"):
        super().__init__()
        if teacher_bn not in TEACHER_BN_MODES:
            raise ValueError(f"teacher_bn: {teacher_bn!r} is not one of {', '.join(TEACHER_BN_MODES)}")
        self.student = student
        self.teacher_bn = teacher_bn
        teacher = teacher.requires_grad_(False).eval()
        self.teacher = batch_statistics_teacher(teacher) if teacher_bn == "batch" else teacher
        s_units, t_units = partition(student, self.teacher, granularity, input_size=input_size, pair=pair)
        self.granularity = granularity
        # Plain lists: the blocks are already registered inside student and teacher.
        self._student_units = [nn.Sequential(*u.blocks) for u in s_units]
        self._teacher_units = [nn.Sequential(*u.blocks) for u in t_units]
        self.to_teacher = nn.ModuleDict(
            {str(i): _connector(s.in_shape[0], t.in_shape[0])
             for i, (s, t) in enumerate(zip(s_units, t_units)) if s.in_shape[0] != t.in_shape[0]}
        )
        self.to_student = nn.ModuleDict(
            {str(i + 1): _connector(t.out_shape[0], s.out_shape[0])
             for i, (s, t) in enumerate(zip(s_units, t_units)) if s.out_shape[0] != t.out_shape[0]}
        )

    @property
    def num_units(self) -> int:
        return len(self._student_units)

    def train(self, mode: bool = True) -> HybridNet:
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics never change
        return self

    def forward(self, x: torch.Tensor, swap: Sequence[bool] | None = None,
                blend: torch.Tensor | None = None) -> torch.Tensor:
        """Unit i of the teacher where ``swap[i]``, of the student elsewhere. With ``blend`` (one weight a per
        unit, a tensor, so that a captured step reads the weights of the moment), unit i where ``swap[i]``
        passes on ``torch.lerp(student_i(x), teacher_i(x), a_i)`` instead, in the student's width: exactly the
        student unit at a = 0 and the teacher unit (through its connectors) at a = 1."""
        if swap is not None and len(swap) != self.num_units:
            raise ValueError(f"swap has {len(swap)} entries for {self.num_units} units")
        if blend is not None:
            return self._forward_blend(x, swap, blend)
        x = self.student.forward_stem(x)
        in_teacher = False
        for i in range(self.num_units):
            use_teacher = swap is not None and bool(swap[i])
            if use_teacher != in_teacher:
                bridge = self.to_teacher if use_teacher else self.to_student
                x = bridge[str(i)](x) if str(i) in bridge else x
            x = (self._teacher_units if use_teacher else self._student_units)[i](x)
            in_teacher = use_teacher
        if in_teacher and str(self.num_units) in self.to_student:
            x = self.to_student[str(self.num_units)](x)
        return self.student.forward_head(x)

    def _teacher_unit(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Teacher unit i on a student-width input, its output in the student's width (connectors where needed)."""
        x = self.to_teacher[str(i)](x) if str(i) in self.to_teacher else x
        x = self._teacher_units[i](x)
        return self.to_student[str(i + 1)](x) if str(i + 1) in self.to_student else x

    def _forward_blend(self, x: torch.Tensor, swap: Sequence[bool] | None, blend: torch.Tensor) -> torch.Tensor:
        x = self.student.forward_stem(x)
        for i in range(self.num_units):
            out = self._student_units[i](x)
            if swap is not None and swap[i]:  # a unit with a = 0 runs the student alone: the same value, cheaper
                out = torch.lerp(out, self._teacher_unit(i, x), blend[i].to(out.dtype))
            x = out
        return self.student.forward_head(x)

    @torch.no_grad()
    def unit_rms_ratios(self, x: torch.Tensor) -> list[float]:
        """Per unit, RMS(student unit output) / RMS(teacher unit output) at the same input: the pure student's
        activation entering the unit (through the connectors where widths differ). Far from 1 means a swap
        hands the next unit features of another scale than it learnt on. One host read per call."""
        was_training = self.training
        self.eval()
        try:
            x = self.student.forward_stem(x)
            ratios = []
            for i in range(self.num_units):
                t_in = self.to_teacher[str(i)](x) if str(i) in self.to_teacher else x
                s_out, t_out = self._student_units[i](x), self._teacher_units[i](t_in)
                if str(i + 1) in self.to_student:  # compared as the next part receives it
                    t_out = self.to_student[str(i + 1)](t_out)
                ratios.append(s_out.float().square().mean().sqrt() / t_out.float().square().mean().sqrt())
                x = s_out
        finally:
            self.train(was_training)
        return torch.stack(ratios).tolist()

    def draw_swap(self, prob: float | Sequence[float], generator: torch.Generator | None = None) -> tuple[bool, ...]:
        """One Bernoulli draw per unit (shared by the whole batch): True with probability ``prob`` (or ``prob[i]``)."""
        p = torch.as_tensor(prob, dtype=torch.float64).expand(self.num_units)
        return tuple(bool(b) for b in torch.rand(self.num_units, generator=generator, dtype=torch.float64) < p)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's and the connectors' parameters: what the optimizer updates."""
        return [*self.student.parameters(), *self.to_teacher.parameters(), *self.to_student.parameters()]
