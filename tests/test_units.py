import pytest

from iakd import models
from iakd.errors import ConfigError
from iakd.units import partition, valid_granularities


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


def test_k_larger_than_a_stage_names_the_pair_stage_and_numbers():
    with pytest.raises(ConfigError, match=r"granularity 4 impossible for resnet56 -> resnet20: stage 0 has 3 student and 9 teacher blocks"):
        partition(*pair("resnet20", "resnet56"), 4, pair="resnet56 -> resnet20")


def test_different_stage_counts_are_refused():
    with pytest.raises(ConfigError, match="student has 3 stages and the teacher 5"):
        partition(*pair("resnet20", "vgg13"), "stage")


def test_spatial_mismatch_names_the_unit():
    from torch import nn

    from iakd.models import BasicBlock

    student, teacher = pair("resnet20", "resnet56")
    student.layer2[0] = BasicBlock(16, 32, stride=1)  # this student keeps 32x32 through stage 1
    with pytest.raises(ConfigError, match=r"unit 1 \(stage 1\) output is 32x32 in the student and 16x16 in the teacher"):
        partition(student, teacher, "stage")
    assert isinstance(student.layer2, nn.Sequential)


def test_bad_granularity_values_are_refused():
    for bad in ("layer", 0, -1, True, 2.5):
        with pytest.raises(ConfigError, match="granularity"):
            partition(*pair("resnet20", "resnet56"), bad)


def test_valid_granularities_for_resnet56_to_resnet20():
    valid = valid_granularities(*pair("resnet20", "resnet56"))
    assert {"stage", 3, "block"} <= set(valid)
    assert 4 not in valid


def test_valid_granularities_for_resnet110_to_resnet32_hold_no_k_a_stage_cannot():
    valid = valid_granularities(*pair("resnet32", "resnet110"))
    assert valid == ["stage", 2, 3, 4, 5, "block"]
    assert all(k <= 5 for k in valid if isinstance(k, int))


def test_single_block_students_only_have_stage_granularity_and_its_alias_block():
    assert valid_granularities(*pair("resnet8x4", "resnet32x4")) == ["stage", "block"]
