"""Report functions on hand-made vectors whose results were worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from models.compat.matrix import average_compatibility, average_multimodel_accuracy, chain_matrix
from models.compat.report import compat_chain, cross_test, report_from_vectors, retrieval_hits
from models.core.spec import EncoderSpec

# Items 0,1 have label 0; items 2,3 label 1. Cosines: 0~1 .994, 0~3 .8, 1~3 .861, 2~3 .6, 1~2 .110.
OLD = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.6]], dtype=np.float32)
LABELS = np.array([0, 0, 1, 1])


def test_cross_test_leave_self_out() -> None:
    # Item 3's nearest neighbours are 1, 0 (label 0) then 2: top-1 miss, AP 1/3; the others hit at rank 1.
    result = cross_test(OLD, LABELS, OLD, LABELS, leave_self_out=True)
    assert result["top1"] == pytest.approx(0.75)
    assert result["mAP"] == pytest.approx((1 + 1 + 1 + 1 / 3) / 4)


def test_cross_test_without_leave_self_out_finds_itself() -> None:
    result = cross_test(OLD, LABELS, OLD, LABELS)
    # Item 3 finds itself first, then its label-mate only at rank 4: AP (1 + 2/4) / 2.
    assert result == {"top1": 1.0, "mAP": pytest.approx((1 + 1 + 1 + 0.75) / 4)}


def test_groups_leave_the_whole_item_out() -> None:
    # Items 0 and 1 are two names of one thing (group 0); 2 shares their label, 3 does not.
    vecs = np.array([[1.0, 0.0], [0.99, 0.14], [0.6, 0.8], [0.8, -0.6]], dtype=np.float32)
    labels, groups = np.array([0, 0, 0, 1]), np.array([0, 0, 1, 2])
    top1, ap = retrieval_hits(vecs, labels, vecs, labels, leave_self_out=True)
    assert top1[0]  # leave-self-out only: the other name of item 0 is its top-1
    top1, ap = retrieval_hits(vecs, labels, vecs, labels, leave_self_out=True, groups=groups)
    # Without its own group, item 0 ranks 3 (cos .8, label 1) before 2 (cos .6): a miss, AP 1/2.
    assert not top1[0] and ap[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="groups"):
        retrieval_hits(vecs, labels, vecs, labels, groups=groups)


def test_compat_dims_cut_and_renormalise_the_query() -> None:
    # An extra dimension that dominates the full vector is dropped; the prefix alone decides.
    query = np.array([[0.0, 0.1, 50.0], [0.1, 0.0, -50.0]], dtype=np.float32)
    gallery = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    result = cross_test(query, np.array([1, 0]), gallery, np.array([1, 0]), compat_dims=2)
    assert result == {"top1": 1.0, "mAP": 1.0}
    with pytest.raises(ValueError, match="compat_dims"):
        cross_test(query, np.array([1, 0]), gallery, np.array([1, 0]))


def test_report_criterion_and_negative_flips() -> None:
    # The new model fixes item 3 (now on the label-1 axis) but breaks item 0 (now nearest to item 2).
    new = np.array([[0.1, 1.0], [0.9, 0.1], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    report = report_from_vectors(OLD, new, LABELS, compat_dims=None)
    assert report.old_old["top1"] == pytest.approx(0.75)
    assert report.new_old["top1"] == pytest.approx(0.75)
    assert not report.criterion_met  # equal is not better
    assert report.negative_flips == pytest.approx(0.25)
    assert report.to_json()["n"] == 4


def _spec(key: str, dim: int, parent: str | None = None, dims: int | None = None) -> EncoderSpec:
    name, version = key.split("@")
    return EncoderSpec(name, version, "fmnist-cnn", "image", dim, compatible_with=parent, compat_dims=dims)


SPECS = {
    s.key: s
    for s in (
        _spec("m@1", 128),
        _spec("m@2", 160, "m@1", 128),
        _spec("m@3", 192, "m@2", 160),
        _spec("other@1", 128),
        _spec("bare@2", 128, "m@1"),
    )
}


def test_compat_chain() -> None:
    spec_of = SPECS.__getitem__
    assert compat_chain(spec_of, "m@3", "m@1") == 128
    assert compat_chain(spec_of, "m@3", "m@2") == 160
    assert compat_chain(spec_of, "m@2", "m@1") == 128
    assert compat_chain(spec_of, "m@3", "m@3") == 192
    assert compat_chain(spec_of, "bare@2", "m@1") == 128  # no compat_dims: the old model's width
    assert compat_chain(spec_of, "m@1", "m@2") is None  # never backwards
    assert compat_chain(spec_of, "m@3", "other@1") is None
    with pytest.raises(KeyError):
        compat_chain(spec_of, "gone@1", "m@1")


def test_ac_am_on_a_hand_made_matrix() -> None:
    nan = np.nan
    matrix = np.array([[0.5, nan, nan], [0.6, 0.7, nan], [0.4, 0.8, 0.9]])
    # Pairs: (2,1) .6>.5 yes, (3,1) .4>.5 no, (3,2) .8>.7 yes.
    assert average_compatibility(matrix) == pytest.approx(2 / 3)
    assert average_multimodel_accuracy(matrix) == pytest.approx((0.5 + 0.6 + 0.7 + 0.4 + 0.8 + 0.9) / 6)


def test_chain_matrix_uses_prefixes() -> None:
    v2 = np.concatenate([OLD, np.full((4, 1), 9.0, np.float32)], axis=1)  # v1 vectors + one huge extra dim
    matrix = chain_matrix([OLD, v2], LABELS, lambda i, j: 2)
    assert matrix[1, 0] == pytest.approx(0.75)  # the prefix is exactly v1: same as old/old
    assert matrix[0, 0] == pytest.approx(0.75)
    assert np.isnan(matrix[0, 1])
