"""Graph sources for Bayesian-network joint policies.

π(a | s) = Π_i π_i(a_i | o_i, a_Pa(i)) over a DAG G (Chen & Zhang, ICML 2023, eq. 1).
A graph source returns, for a batch of team observations, the adjacency G [B, n, n] and a
topological order [B, n] in which the agents must be sampled. The empty graph is MAPPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch
from torch import nn


@dataclass
class GraphSample:
    adjacency: torch.Tensor  # [B, n, n] float; adjacency[b, j, i] = 1 if j is a parent of i
    order: torch.Tensor  # [B, n] long; a topological order of adjacency[b]
    empty: bool  # True when no agent has a parent (all agents sampled in one pass)


def check_acyclic(n: int, edges: list[tuple[int, int]]) -> list[int]:
    """Return a topological order of the graph on ``n`` agents, or raise ValueError."""
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    for j, i in edges:
        if not (0 <= j < n and 0 <= i < n) or i == j:
            raise ValueError(f"edge [{j}, {i}] is not a pair of distinct agents in 0..{n - 1}")
        g.add_edge(j, i)
    if not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        raise ValueError(f"edges contain the cycle {[list(e) for e in cycle]}; a DAG is required")
    return list(nx.lexicographical_topological_sort(g))


class FixedGraph(nn.Module):
    """A graph that does not depend on the observations: empty, full or listed edges."""

    def __init__(self, n: int, edges: list[tuple[int, int]]):
        super().__init__()
        order = check_acyclic(n, edges)
        adj = torch.zeros(n, n)
        for j, i in edges:
            adj[j, i] = 1.0
        self.register_buffer("adj", adj, persistent=False)
        self.register_buffer("topo", torch.tensor(order, dtype=torch.long), persistent=False)
        self.is_empty = not edges

    def forward(self, obs: torch.Tensor, noise: dict | None = None) -> GraphSample:
        b = obs.shape[0]
        return GraphSample(
            self.adj.expand(b, -1, -1), self.topo.expand(b, -1), self.is_empty
        )


def _full_edges(n: int) -> list[tuple[int, int]]:
    # The complete DAG under the identity order: every earlier agent is a parent of later ones.
    return [(j, i) for i in range(n) for j in range(i)]


def _learned(n: int, obs_dim: int, cfg: dict) -> nn.Module:
    from marl.graphs.learned import LearnedDAG

    return LearnedDAG(n, obs_dim, cfg)


GRAPH_SOURCES = {
    "empty": lambda n, d, cfg: FixedGraph(n, []),
    "full": lambda n, d, cfg: FixedGraph(n, _full_edges(n)),
    "fixed": lambda n, d, cfg: FixedGraph(n, [tuple(e) for e in cfg.get("edges", [])]),
    "learned": _learned,
}


def make_graph(n: int, obs_dim: int, cfg: dict) -> nn.Module:
    mode = cfg.get("mode", "empty")
    if mode not in GRAPH_SOURCES:
        raise ValueError(f"graph mode '{mode}' is not one of {sorted(GRAPH_SOURCES)}")
    return GRAPH_SOURCES[mode](n, obs_dim, cfg)
