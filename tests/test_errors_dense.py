"""Errors of the dense checks (glocal/checks/dense.py): sequence tensors and merging results.

One test per message: the exception type, the values and the fix."""

from __future__ import annotations

from conftest import raises
from conftest import zeros as t

import glocal

O, L = t(1, 4, 2, 8), t(1, 4, 2)


def test_wrong_rank_attention():
    q = t(1, 4, 2)
    with raises(ValueError, "attention takes q of shape [B, T, H, D]", "q.dim()=3", "(1, 4, 2)", "Flatten grids"):
        glocal.attention(q, q, q)


def test_mismatched_sequence_length():
    q = t(1, 4, 2, 8)
    with raises(ValueError, "k and v must have the same sequence length", "k T=4, v T=5", "one value per key"):
        glocal.attention(q, q, t(1, 5, 2, 8))


def test_merge_not_lists():
    with raises(TypeError, "a list of outputs and a list of lses", "got Tensor and list", "merge_attentions([out_a"):
        glocal.merge_attentions(O, [L])


def test_merge_count_mismatch():
    with raises(ValueError, "one lse per output", "got 2 outputs and 1 lses", "matching lists"):
        glocal.merge_attentions([O, O], [L])


def test_merge_empty():
    with raises(ValueError, "at least one of each", "got 0 outputs and 0 lses"):
        glocal.merge_attentions([], [])


def test_merge_lse_shape():
    with raises(ValueError, "output's shape without its last", "outputs[1].shape=(1, 4, 2, 8)",
                "lses[1].shape=(1, 4)", "return_lse=True"):
        glocal.merge_attentions([O, O], [L, t(1, 4)])


def test_merge_output_shapes_differ():
    with raises(ValueError, "all outputs must have one shape", "outputs[0].shape=(1, 4, 2, 8)",
                "outputs[1].shape=(1, 5, 2, 8)", "same queries"):
        glocal.merge_attentions([O, t(1, 5, 2, 8)], [L, t(1, 5, 2)])


def test_merge_dtypes_differ():
    with raises(TypeError, "outputs[0].dtype=torch.float32", "outputs[1].dtype=torch.float64"):
        glocal.merge_attentions([O, O.double()], [L, L])


def test_merge_not_a_tensor():
    with raises(TypeError, "lses[0] must be a torch.Tensor", "type float"):
        glocal.merge_attentions([O], [0.0])


def test_merge_lse_wrong_device_or_dtype():
    with raises(ValueError, "floating-point tensor on its output's device", "lses[0].device=meta",
                "outputs[0].device=cpu"):
        glocal.merge_attentions([O], [L.to("meta")])
    with raises(ValueError, "lses[0].dtype=torch.int64"):
        glocal.merge_attentions([O], [L.long()])
