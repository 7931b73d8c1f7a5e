"""The codebook's prefix trie as tensors, so a decoder applies the "real items only" constraint with a
few tensor ops per SID level instead of a Python walk per beam.

Layout (CSR per level l = 0..L-1): the nodes at depth l are the distinct prefixes of length l (depth 0
is the root, node 0). Node n's children are edges `offsets[l][n] : offsets[l][n+1]`, each with its code
`codes[l][e]` and the node it leads to at depth l+1, `child[l][e]`; at the last level `child` is the
index of the SID in `sids` (an item). Edges are sorted by (node, code), so `keys[l] = node * K_l + code`
is sorted and one `searchsorted` finds an edge. Memory is O(items × L), whatever the level sizes.

A node id of -1 stands for a prefix the trie does not know (a free rollout that left the catalog): it
allows every code, and its children are unknown too — what a constrained scorer needs for such rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class SidTrie:
    def __init__(self, sids: Sequence[Sequence[int]], level_sizes: Sequence[int]) -> None:
        self.L = len(level_sizes)
        self.K = [int(k) for k in level_sizes]
        unique = sorted({tuple(int(c) for c in s) for s in sids})
        self.sids = torch.tensor(unique, dtype=torch.long).reshape(len(unique), self.L)
        arr = self.sids.numpy()
        self.offsets: list[torch.Tensor] = []
        self.codes: list[torch.Tensor] = []
        self.child: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []
        node = np.zeros(len(arr), dtype=np.int64)  # each SID's node at the current depth
        n_nodes = 1
        for lvl in range(self.L):
            # an edge per distinct (node, code); the rows are sorted, so edges come out sorted too
            key = node * self.K[lvl] + arr[:, lvl]
            edge_keys, first = np.unique(key, return_index=True)
            edge_node = edge_keys // self.K[lvl]
            counts = np.bincount(edge_node, minlength=n_nodes)
            self.offsets.append(torch.from_numpy(np.concatenate([[0], np.cumsum(counts)])))
            self.codes.append(torch.from_numpy(edge_keys % self.K[lvl]))
            self.keys.append(torch.from_numpy(edge_keys))
            if lvl < self.L - 1:
                self.child.append(torch.arange(len(edge_keys)))  # edge e leads to node e at depth l+1
                node = np.searchsorted(edge_keys, key)
                n_nodes = len(edge_keys)
            else:  # the leaf edge leads to the item: unique SIDs, so one edge per row
                self.child.append(torch.from_numpy(np.arange(len(arr))[first]))

    def __len__(self) -> int:
        return len(self.sids)

    def root(self, rows: int) -> torch.Tensor:
        """The root node for `rows` rows; an empty trie knows no prefix, so its root is unknown (-1)."""
        return torch.full((rows,), 0 if len(self) else -1, dtype=torch.long)

    def mask(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """[R, K_l] additive mask on the device of `nodes`: 0 where node's prefix continues with the code
        to a real SID, -inf elsewhere; an unknown node (-1) allows every code."""
        device = nodes.device
        offsets, codes = self.offsets[level].to(device), self.codes[level].to(device)
        known = nodes >= 0
        safe = nodes.clamp(min=0)
        start, stop = offsets[safe], offsets[safe + 1]
        count = torch.where(known, stop - start, torch.zeros_like(start))
        rows = torch.repeat_interleave(torch.arange(len(nodes), device=device), count)
        first = torch.repeat_interleave(start - (count.cumsum(0) - count), count)
        edges = first + torch.arange(len(rows), device=device)
        out = torch.full((len(nodes), self.K[level]), float("-inf"), device=device)
        out[rows, codes[edges]] = 0.0
        out[~known] = 0.0
        return out

    def step(self, level: int, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The node each (node, code) leads to at depth level+1 (at the last level: the SID index into
        `self.sids`); -1 where the trie has no such edge or the node is unknown."""
        device = nodes.device
        keys, child = self.keys[level].to(device), self.child[level].to(device)
        if not len(keys):
            return torch.full_like(nodes, -1)
        query = nodes.clamp(min=0) * self.K[level] + codes
        pos = torch.searchsorted(keys, query).clamp(max=len(keys) - 1)
        found = (nodes >= 0) & (keys[pos] == query)
        return torch.where(found, child[pos], torch.full_like(nodes, -1))

    def walk(self, codes: torch.Tensor, upto: int) -> torch.Tensor:
        """Nodes at depth `upto` of each row's first `upto` codes ([R, >= upto] → [R])."""
        nodes = self.root(len(codes)).to(codes.device)
        for lvl in range(upto):
            nodes = self.step(lvl, nodes, codes[:, lvl])
        return nodes
