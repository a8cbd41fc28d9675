"""Drawings of a learned DAG: the most frequent graph, edge widths by edge frequency."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402


def draw_dag(mode_graph: np.ndarray, edge_freq: np.ndarray, path: Path, title: str = "") -> Path:
    """Draw ``mode_graph`` (G[j, i] = 1: j -> i) with widths from ``edge_freq`` [n, n]."""
    n = mode_graph.shape[0]
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    for j in range(n):
        for i in range(n):
            if mode_graph[j, i] > 0.5:
                g.add_edge(j, i, weight=float(edge_freq[j, i]))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    pos = nx.circular_layout(g)
    widths = [0.5 + 6.0 * g[u][v]["weight"] for u, v in g.edges]
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color="#cfe2f3", edgecolors="#333333", node_size=600)
    nx.draw_networkx_labels(g, pos, ax=ax, labels={i: str(i) for i in range(n)})
    nx.draw_networkx_edges(g, pos, ax=ax, width=widths, arrowsize=16, node_size=600,
                           connectionstyle="arc3,rad=0.08")
    ax.set_title(title or f"most frequent DAG ({g.number_of_edges()} edges)", fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
