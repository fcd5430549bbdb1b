"""Skeleton graphs: shapes per layout, normalisation, and the reference (loop) ST-GCN partition."""
from __future__ import annotations

import numpy as np
import pytest

from recognizer_core.models.graph import LAYOUTS, Graph, normalize_digraph


@pytest.mark.parametrize("layout,num_node", [("coco", 17), ("nturgb+d", 25), ("openpose", 18), ("handmp", 21)])
def test_spatial_adjacency(layout, num_node):
    g = Graph(layout, "spatial")
    A = g.A
    assert A.shape == (3, num_node, num_node) and A.dtype == np.float32
    np.testing.assert_array_equal(A[0], np.eye(num_node))
    assert len(g.inward) == num_node - 1  # a tree over all joints
    for k in (1, 2):  # inward / outward: columns with edges sum to 1, others are all zero
        col = A[k].sum(0)
        assert np.allclose(col[col > 0], 1.0)
        assert (A[k] >= 0).all() and np.count_nonzero(A[k]) == num_node - 1
    # outward is the transpose pattern of inward
    np.testing.assert_array_equal(A[1] > 0, (A[2] > 0).T)
    # centre joint has no inward edge leaving it (it is the root)
    assert A[1][:, g.center].sum() == 0


def test_coco_inward_values():
    A = Graph("coco").A
    # edge (child 15 -> parent 13) sits at row 13, column 15; joint 15 has one parent so the value is 1
    assert A[1][13, 15] == 1.0 and A[2][15, 13] == 1.0
    # joint 0 (nose) has 4 children pointing to it in the outward direction: column 0 of A[2] holds 4 x 1/4
    np.testing.assert_allclose(A[2][:, 0][A[2][:, 0] > 0], [0.25] * 4)


def test_alias_and_errors():
    np.testing.assert_array_equal(Graph("coco-hand").A, Graph("handmp").A)
    with pytest.raises(ValueError, match="layout"):
        Graph("kinect")
    with pytest.raises(ValueError, match="mode"):
        Graph("coco", "nope")


def test_normalize_digraph_matches_degree_division():
    rng = np.random.default_rng(0)
    A = (rng.random((6, 6)) > 0.6).astype(float)
    A[:, 2] = 0
    expected = np.zeros_like(A)
    for i in range(6):
        if A[:, i].sum() > 0:
            expected[:, i] = A[:, i] / A[:, i].sum()
    np.testing.assert_allclose(normalize_digraph(A), expected)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_stgcn_spatial_matches_reference_loops(layout):
    g = Graph(layout, "stgcn_spatial")
    hop, c, n = g.hop_dis, g.center, g.num_node
    norm = normalize_digraph((hop <= 1).astype(float))
    close, further, root = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if hop[j, i] == 0:
                root[j, i] = norm[j, i] if hop[j, c] >= hop[i, c] else 0
            if hop[j, i] == 1:
                if hop[j, c] >= hop[i, c]:
                    close[j, i] = norm[j, i]
                else:
                    further[j, i] = norm[j, i]
    np.testing.assert_allclose(g.A, np.stack([root, close, further]).astype(np.float32))
    np.testing.assert_allclose(g.A.sum(0).sum(0), 1.0, rtol=1e-6)  # the 3 partitions split each column


def test_exported_hand_config_builds_in_mmaction2s_graph():
    """mmaction2 1.2.0's Graph takes 'openpose' / 'nturgb+d' / 'coco' or a dict (num_node, inward, center); the
    exported config of a handmp model said layout='coco-hand', which its `assert layout in [...]` refused."""
    from recognizer_core.models.checkpoint import mmaction_config_text
    from recognizer_core.models.recognizer import ModelConfig
    scope: dict = {}
    exec(mmaction_config_text(ModelConfig(layout="handmp", num_classes=3, in_channels=3)), {}, scope)
    layout = scope["model"]["backbone"]["graph_cfg"]["layout"]
    assert isinstance(layout, dict) and {"num_node", "inward", "center"} <= set(layout)  # mmaction2's asserts
    hand = Graph("handmp")
    assert (layout["num_node"], layout["center"], [tuple(e) for e in layout["inward"]]) == (
        hand.num_node, hand.center, [tuple(e) for e in hand.inward])
    scope = {}
    exec(mmaction_config_text(ModelConfig(num_classes=3, in_channels=3)), {}, scope)
    assert scope["model"]["backbone"]["graph_cfg"]["layout"] == "coco"
