"""Skeleton graphs for the GCN backbones (mmaction2 1.2.0 / PYSKL `Graph`, 'spatial' and 'stgcn_spatial' modes).

`Graph(layout).A` is a float32 array (num_subsets, V, V); `A[k] @` maps features of joint v (rows) to joint w
(columns), the orientation `einsum('nkctv,kvw->nctw')` in the GCN unit expects.
"""
from __future__ import annotations

import numpy as np

# Edges are (child, parent) pairs pointing towards the centre joint, as in mmaction2 (0-based).
LAYOUTS: dict[str, tuple[int, int, list[tuple[int, int]]]] = {
    # name: (num_node, center, inward edges)
    "openpose": (18, 1, [(4, 3), (3, 2), (7, 6), (6, 5), (13, 12), (12, 11), (10, 9), (9, 8), (11, 5), (8, 2),
                         (5, 1), (2, 1), (0, 1), (15, 0), (14, 0), (17, 15), (16, 14)]),
    "nturgb+d": (25, 20, [(i - 1, j - 1) for i, j in [
        (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10), (12, 11),
        (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (22, 8), (23, 8), (24, 12),
        (25, 12)]]),
    "coco": (17, 0, [(15, 13), (13, 11), (16, 14), (14, 12), (11, 5), (12, 6), (9, 7), (7, 5), (10, 8), (8, 6),
                     (5, 0), (6, 0), (1, 0), (3, 1), (2, 0), (4, 2)]),
    # MediaPipe / COCO-WholeBody hand: wrist 0, then 4 joints per finger (PYSKL 'handmp'; mmaction2 has no hand
    # layout).
    "handmp": (21, 0, [(1, 0), (2, 1), (3, 2), (4, 3), (5, 0), (6, 5), (7, 6), (8, 7), (9, 0), (10, 9), (11, 10),
                       (12, 11), (13, 0), (14, 13), (15, 14), (16, 15), (17, 0), (18, 17), (19, 18), (20, 19)]),
}
LAYOUT_ALIASES = {"coco-hand": "handmp"}
MODES = ("spatial", "stgcn_spatial", "binary_adj")


def edge2mat(edges: list[tuple[int, int]], num_node: int) -> np.ndarray:
    A = np.zeros((num_node, num_node))
    for i, j in edges:
        A[j, i] = 1
    return A


def normalize_digraph(A: np.ndarray, dim: int = 0) -> np.ndarray:
    """A @ D^-1 with D the degree along `dim` (zero-degree columns stay zero)."""
    deg = A.sum(dim)
    inv = np.zeros_like(deg)
    inv[deg > 0] = 1.0 / deg[deg > 0]
    return A * inv[None, :]


def get_hop_distance(num_node: int, edges: list[tuple[int, int]], max_hop: int = 1) -> np.ndarray:
    A = np.eye(num_node)
    for i, j in edges:
        A[i, j] = A[j, i] = 1
    hop_dis = np.full((num_node, num_node), np.inf)
    reach = np.stack([np.linalg.matrix_power(A, d) for d in range(max_hop + 1)]) > 0
    for d in range(max_hop, -1, -1):
        hop_dis[reach[d]] = d
    return hop_dis


class Graph:
    """Adjacency of a skeleton layout: `A` (num_subsets, V, V) float32, `num_node`, `inward`, `center`."""

    def __init__(self, layout: str = "coco", mode: str = "spatial", max_hop: int = 1) -> None:
        layout = LAYOUT_ALIASES.get(layout, layout)
        if layout not in LAYOUTS:
            raise ValueError(f"unknown graph layout {layout!r}; expected one of {sorted(LAYOUTS)}")
        if mode not in MODES:
            raise ValueError(f"unknown graph mode {mode!r}; expected one of {MODES}")
        self.layout, self.mode, self.max_hop = layout, mode, max_hop
        self.num_node, self.center, self.inward = LAYOUTS[layout]
        self.self_link = [(i, i) for i in range(self.num_node)]
        self.outward = [(j, i) for i, j in self.inward]
        self.neighbor = self.inward + self.outward
        self.hop_dis = get_hop_distance(self.num_node, self.inward, max_hop)
        self.A = getattr(self, mode)().astype(np.float32)

    def spatial(self) -> np.ndarray:
        """Identity, inward (normalised), outward (normalised): the STGCN++ partition."""
        n = self.num_node
        return np.stack((edge2mat(self.self_link, n), normalize_digraph(edge2mat(self.inward, n)),
                         normalize_digraph(edge2mat(self.outward, n))))

    def stgcn_spatial(self) -> np.ndarray:
        """Original ST-GCN partition: root / closer-to-centre / further-from-centre per hop."""
        adj = (self.hop_dis <= self.max_hop).astype(np.float64)
        norm = normalize_digraph(adj)
        hop, center = self.hop_dis, self.center
        A = []
        for h in range(self.max_hop + 1):
            same_hop = hop == h  # [j, i]: hop_dis[j, i] == h
            closer = hop[:, center][:, None] >= hop[:, center][None, :]  # [j, i]: hop_dis[j,c] >= hop_dis[i,c]
            A.append(np.where(same_hop & closer, norm, 0.0))
            if h > 0:
                A.append(np.where(same_hop & ~closer, norm, 0.0))
        return np.stack(A)

    def binary_adj(self) -> np.ndarray:
        return edge2mat(self.neighbor, self.num_node)[None]
