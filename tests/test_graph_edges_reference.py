"""Every skeleton graph (models/graph.py) equals the reference implementation's, edge for edge and value for value.

test_graph.py checks shapes and tree properties only, so rewiring a hand joint ((6, 5) -> (6, 0): still a tree of
21 joints) passed. The references below are literal copies:
- openpose, nturgb+d, coco: mmaction2 1.2.0, mmaction/models/utils/graph.py, Graph.set_layout (tag v1.2.0 of
  github.com/open-mmlab/mmaction2), with its edge2mat / normalize_digraph / get_hop_distance and the spatial and
  stgcn_spatial modes;
- handmp: mmaction2 1.2.0's Graph has no hand layout (its `assert layout in ['openpose', 'nturgb+d', 'coco']`);
  the edges are PYSKL's, pyskl/utils/graph.py, Graph.get_layout 'handmp' (github.com/kennymckormick/pyskl at
  3f6795f), the layout this project's 'handmp' is named after and exports to mmaction2 as a dict layout.
"""
from __future__ import annotations

import numpy as np
import pytest

from recognizer_core.models.graph import LAYOUTS, Graph

_NTU_BASE = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
             (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (22, 8),
             (23, 8), (24, 12), (25, 12)]
# layout: (num_node, center, inward), as the reference sets them
REFERENCE = {
    "openpose": (18, 1, [(4, 3), (3, 2), (7, 6), (6, 5), (13, 12), (12, 11), (10, 9), (9, 8), (11, 5), (8, 2),
                         (5, 1), (2, 1), (0, 1), (15, 0), (14, 0), (17, 15), (16, 14)]),
    "nturgb+d": (25, 21 - 1, [(i - 1, j - 1) for (i, j) in _NTU_BASE]),
    "coco": (17, 0, [(15, 13), (13, 11), (16, 14), (14, 12), (11, 5), (12, 6), (9, 7), (7, 5), (10, 8), (8, 6),
                     (5, 0), (6, 0), (1, 0), (3, 1), (2, 0), (4, 2)]),
    "handmp": (21, 0, [(1, 0), (2, 1), (3, 2), (4, 3), (5, 0), (6, 5), (7, 6), (8, 7), (9, 0), (10, 9), (11, 10),
                       (12, 11), (13, 0), (14, 13), (15, 14), (16, 15), (17, 0), (18, 17), (19, 18), (20, 19)]),
}


# mmaction2 1.2.0 mmaction/models/utils/graph.py, copied (docstrings dropped)
def _edge2mat(edges, num_node):
    A = np.zeros((num_node, num_node))
    for i, j in edges:
        A[j, i] = 1
    return A


def _normalize_digraph(A, dim=0):
    Dl = np.sum(A, dim)
    h, w = A.shape
    Dn = np.zeros((w, w))
    for i in range(w):
        if Dl[i] > 0:
            Dn[i, i] = Dl[i] ** (-1)
    return np.dot(A, Dn)


def _get_hop_distance(num_node, edges, max_hop=1):
    A = np.eye(num_node)
    for i, j in edges:
        A[i, j] = 1
        A[j, i] = 1
    hop_dis = np.zeros((num_node, num_node)) + np.inf
    transfer_mat = [np.linalg.matrix_power(A, d) for d in range(max_hop + 1)]
    arrive_mat = (np.stack(transfer_mat) > 0)
    for d in range(max_hop, -1, -1):
        hop_dis[arrive_mat[d]] = d
    return hop_dis


def _spatial(num_node, inward):
    outward = [(j, i) for (i, j) in inward]
    return np.stack((_edge2mat([(i, i) for i in range(num_node)], num_node),
                     _normalize_digraph(_edge2mat(inward, num_node)), _normalize_digraph(_edge2mat(outward, num_node))))


def _stgcn_spatial(num_node, center, inward, max_hop=1):
    hop_dis = _get_hop_distance(num_node, inward, max_hop)
    adj = np.zeros((num_node, num_node))
    adj[hop_dis <= max_hop] = 1
    normalize_adj = _normalize_digraph(adj)
    A = []
    for hop in range(max_hop + 1):
        a_close = np.zeros((num_node, num_node))
        a_further = np.zeros((num_node, num_node))
        for i in range(num_node):
            for j in range(num_node):
                if hop_dis[j, i] == hop:
                    if hop_dis[j, center] >= hop_dis[i, center]:
                        a_close[j, i] = normalize_adj[j, i]
                    else:
                        a_further[j, i] = normalize_adj[j, i]
        A.append(a_close)
        if hop > 0:
            A.append(a_further)
    return np.stack(A)


def test_every_layout_has_a_reference():
    assert set(LAYOUTS) == set(REFERENCE)


@pytest.mark.parametrize("layout", sorted(REFERENCE))
def test_edges_and_center_equal_the_reference(layout):
    num_node, center, inward = REFERENCE[layout]
    assert LAYOUTS[layout] == (num_node, center, inward)  # same pairs, same order
    g = Graph(layout)
    assert (g.num_node, g.center, g.inward) == (num_node, center, inward)


@pytest.mark.parametrize("layout", sorted(REFERENCE))
def test_adjacency_equals_the_reference(layout):
    num_node, center, inward = REFERENCE[layout]
    np.testing.assert_allclose(Graph(layout, "spatial").A, _spatial(num_node, inward), rtol=0, atol=1e-7)
    np.testing.assert_allclose(Graph(layout, "stgcn_spatial").A, _stgcn_spatial(num_node, center, inward),
                               rtol=0, atol=1e-7)
    np.testing.assert_array_equal(Graph(layout, "binary_adj").A[0],
                                  _edge2mat(inward + [(j, i) for (i, j) in inward], num_node))
