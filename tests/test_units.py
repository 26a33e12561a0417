import re
from pathlib import Path

import pytest
import yaml

from iakd import models
from iakd.errors import ConfigError
from iakd.frozen import batch_statistics_teacher
from iakd.models import blocks_per_stage
from iakd.units import canonical_granularity, partition, valid_granularities

ROOT = Path(__file__).resolve().parents[1]


def pair(student, teacher):
    return models.build(student, 10), models.build(teacher, 10)


def test_stage_granularity_gives_one_unit_per_stage_with_all_blocks():
    s_units, t_units = partition(*pair("resnet20", "resnet56"), "stage")
    assert [len(u.blocks) for u in s_units] == [3, 3, 3]
    assert [len(u.blocks) for u in t_units] == [9, 9, 9]


def test_integer_granularity_splits_each_stage_into_near_equal_contiguous_runs():
    student, teacher = pair("resnet32", "resnet110")  # 5 and 18 blocks per stage
    s_units, t_units = partition(student, teacher, 2)
    assert [len(u.blocks) for u in s_units] == [3, 2] * 3
    assert [len(u.blocks) for u in t_units] == [9, 9] * 3
    # contiguous and in order: unit 0 then unit 1 cover stage 0 exactly
    assert list(s_units[0].blocks + s_units[1].blocks) == list(student.layer1)
    assert [u.stage for u in t_units] == [0, 0, 1, 1, 2, 2]


def test_block_granularity_gives_each_student_block_its_own_unit():
    s_units, t_units = partition(*pair("resnet20", "resnet56"), "block")
    assert len(s_units) == 9 and all(len(u.blocks) == 1 for u in s_units)
    assert [len(u.blocks) for u in t_units] == [3] * 9


def test_units_record_the_shapes_they_map_between():
    s_units, t_units = partition(*pair("wrn_40_1", "wrn_40_2"), "stage")
    assert [u.out_shape for u in s_units] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert [u.out_shape for u in t_units] == [(32, 32, 32), (64, 16, 16), (128, 8, 8)]
    assert s_units[0].in_shape == t_units[0].in_shape == (16, 32, 32)


def test_a_batch_statistics_teacher_is_cut_at_one_pixel():
    """data.image_size=1 leaves every map 1x1; a teacher normalising with batch statistics still gets cut (the
    probe holds two images: BatchNorm cannot normalise one value per channel)."""
    student, teacher = pair("resnet8", "resnet14")
    s_units, t_units = partition(student, batch_statistics_teacher(teacher), "stage", input_size=1)
    assert [u.out_shape for u in s_units] == [u.out_shape for u in t_units] == [(16, 1, 1), (32, 1, 1), (64, 1, 1)]


def test_k_larger_than_a_stage_names_the_pair_stage_and_numbers():
    message = r"^granularity: 4 is impossible for resnet56 -> resnet20: stage 0 has 3 student and 9 teacher blocks"
    with pytest.raises(ConfigError, match=message):
        partition(*pair("resnet20", "resnet56"), 4, pair="resnet56 -> resnet20")


def test_different_stage_counts_are_refused():
    with pytest.raises(ConfigError, match="student has 3 stages and the teacher 5"):
        partition(*pair("resnet20", "vgg13"), "stage")


def test_spatial_mismatch_names_the_unit():
    from torch import nn

    from iakd.models import BasicBlock

    student, teacher = pair("resnet20", "resnet56")
    student.layer2[0] = BasicBlock(16, 32, stride=1)  # this student keeps 32x32 through stage 1
    message = r"unit 1 \(stage 1\) output is 32x32 in the student and 16x16 in the teacher"
    with pytest.raises(ConfigError, match=message):
        partition(student, teacher, "stage")
    assert isinstance(student.layer2, nn.Sequential)


@pytest.mark.parametrize("bad", ["layer", 0, -1, True, 2.5])
def test_bad_granularity_values_are_refused(bad):
    with pytest.raises(ConfigError, match=rf"^granularity: {re.escape(repr(bad))} is not one of 'stage', 'block'"):
        partition(*pair("resnet20", "resnet56"), bad)


def test_valid_granularities_for_resnet56_to_resnet20_name_3_block():
    # resnet20 has 3 blocks per stage: k = 3 is the block partition, k = 1 the stage one
    assert valid_granularities(*pair("resnet20", "resnet56")) == ["stage", 2, "block"]


def test_valid_granularities_for_resnet110_to_resnet32_hold_each_k_a_stage_allows_once():
    assert valid_granularities(*pair("resnet32", "resnet110")) == ["stage", 2, 3, 4, "block"]


def test_single_block_students_only_have_stage_granularity():
    assert valid_granularities(*pair("resnet8x4", "resnet32x4")) == ["stage"]


@pytest.mark.parametrize("g, expected", [("stage", "stage"), (1, "stage"), (2, 2), (3, "block"), ("block", "block")])
def test_canonical_granularity_names_each_partition_once(g, expected):
    assert canonical_granularity([3, 3, 3], [9, 9, 9], g) == expected


def _shipped_pairs():
    pairs = set()
    for path in [*ROOT.glob("configs/*.yaml"), *ROOT.glob("tune/configs/*.yaml")]:
        values = yaml.safe_load(path.read_text())
        run = values.get("run", values)
        if "teacher" in run and "student" in run:
            pairs.add((run["student"]["arch"], run["teacher"]["arch"]))
    return sorted(pairs)


@pytest.mark.parametrize("student, teacher", _shipped_pairs())
def test_every_shipped_pair_lists_each_distinct_partition_once_under_its_canonical_name(student, teacher):
    s, t = pair(student, teacher)
    valid = valid_granularities(s, t)
    cuts = [tuple(len(u.blocks) for u in partition(s, t, g)[0]) for g in valid]
    assert len(set(cuts)) == len(cuts) == len(valid)  # no two names cut the pair alike
    assert valid[0] == "stage" and cuts[0] == tuple(len(st) for st in s.stages())  # one unit per stage
    for g in valid:
        assert canonical_granularity(blocks_per_stage(student), blocks_per_stage(teacher), g) == g
    if "block" in valid:
        assert cuts[-1] == (1,) * sum(len(st) for st in s.stages())
