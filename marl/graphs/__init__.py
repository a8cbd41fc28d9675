"""DAGs over a team's agents: who conditions on whom (G[j, i] = 1: j is a parent of i)."""

from marl.graphs.dag import GRAPH_SOURCES, FixedGraph, GraphSample, check_acyclic, make_graph

__all__ = ["GRAPH_SOURCES", "FixedGraph", "GraphSample", "check_acyclic", "make_graph"]
