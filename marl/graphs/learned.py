"""Context-aware differentiable DAG sampling (Chen & Zhang, ICML 2023, §4.2, after
Charpentier et al., "Differentiable DAG Sampling", ICLR 2022).

    G = U ⊙ (Pᵀ M P)

- M: strictly upper-triangular ones; position a may be a parent of position b > a.
- P: a permutation (P[pos, agent] = 1), i.e. a topological order. Gumbel-Sinkhorn over a learned
  score matrix (20 iterations, temperature 1) gives a soft permutation; the Hungarian algorithm
  (maximum-weight matching of the perturbed scores) makes it hard; the straight-through
  estimator passes gradients to the scores. A fixed order (P = I) is an option.
- U: per ordered pair (j, i), a 2-class hard Gumbel-softmax (temperature 1, straight-through)
  over logits from a context network of all agents' observations, so G changes with the
  situation at every step.

G is acyclic by construction. The Gumbel noise of every sample can be returned and fed back:
the learner rebuilds the rollout's G from stored noise, so at unchanged parameters the first
PPO epoch sees exactly the rollout's graph (ratio 1).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from marl.graphs.dag import GraphSample

SINKHORN_ITERS = 20
ENUMERATE_PERMUTATIONS_UP_TO = 6  # n! candidates: exact, batched assignment for small teams


def gumbel_like(x: torch.Tensor) -> torch.Tensor:
    u = torch.rand_like(x).clamp(1e-9, 1 - 1e-9)
    return -torch.log(-torch.log(u))


def sinkhorn(log_alpha: torch.Tensor, iters: int = SINKHORN_ITERS) -> torch.Tensor:
    """Row/column normalisation in log space (Mena et al. 2018, eq. 3): [B, n, n] -> soft perm."""
    for _ in range(iters):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-2, keepdim=True)
    return log_alpha.exp()


class HardAssignment(nn.Module):
    """Maximum-weight permutation of each [n, n] matrix in a batch (Hungarian algorithm:
    scipy's linear_sum_assignment, or an exact search over all n! permutations for small n).

    The n! candidates are a (non-persistent) buffer, so they live on the module's device and
    the search never leaves it. scipy's path (n > 6) copies each batch to the host and back:
    on a GPU that is one round trip per forward pass."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        if n <= ENUMERATE_PERMUTATIONS_UP_TO:
            perms = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)
            onehot = F.one_hot(perms, n).float()  # [n!, n(pos), n(agent)]
        else:
            onehot = None
        self.register_buffer("perm_onehot", onehot, persistent=False)

    def forward(self, soft: torch.Tensor) -> torch.Tensor:
        if self.perm_onehot is not None:
            # Score every permutation at once; identical to the Hungarian optimum.
            cand = self.perm_onehot.to(soft.dtype)
            best = torch.einsum("bpa,kpa->bk", soft, cand).argmax(-1)
            return cand[best]
        out = torch.zeros_like(soft)
        for b, m in enumerate(soft.detach().cpu().numpy()):
            rows, cols = linear_sum_assignment(m, maximize=True)
            out[b, rows, cols] = 1.0
        return out


class LearnedDAG(nn.Module):
    """cfg keys: ``order`` ('learned' | 'fixed'), ``context_hidden``."""

    def __init__(self, n: int, obs_dim: int, cfg: dict):
        super().__init__()
        self.n = n
        self.is_empty = False
        self.learn_order = cfg.get("order", "learned") == "learned"
        hidden = int(cfg.get("context_hidden", 64))
        self.context = nn.Sequential(
            nn.Linear(n * obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, n * n * 2)
        )
        nn.init.zeros_(self.context[-1].weight)
        with torch.no_grad():  # start with edges present and absent equally likely
            self.context[-1].bias.zero_()
        self.order_scores = nn.Parameter(torch.zeros(n, n))
        self.assign = HardAssignment(n)
        self.register_buffer("upper", torch.triu(torch.ones(n, n), diagonal=1), persistent=False)
        # Running record of what the policy samples (for TensorBoard and drawings).
        self.register_buffer("edge_freq", torch.zeros(n, n))
        self.register_buffer("mode_graph", torch.zeros(n, n))
        self.register_buffer("mode_share", torch.zeros(()))

    @property
    def max_edges(self) -> int:
        return self.n * (self.n - 1) // 2

    def noise_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"perm": (self.n, self.n), "edge": (self.n, self.n, 2)}

    def sample_noise(self, b: int, device) -> dict[str, torch.Tensor]:
        z = torch.zeros(b, self.n, self.n, 2, device=device)
        return {"perm": gumbel_like(z[..., 0]), "edge": gumbel_like(z)}

    def forward(self, obs: torch.Tensor, noise: dict[str, torch.Tensor] | None = None) -> GraphSample:
        b = obs.shape[0]
        if noise is None:
            noise = self.sample_noise(b, obs.device)
        # P: hard permutation with a straight-through gradient (Charpentier et al. 2022, §3).
        if self.learn_order:
            log_alpha = self.order_scores.expand(b, -1, -1) + noise["perm"]
            # The hard permutation is the matching M(X) = argmax_P <P, X> of the perturbed
            # scores (Mena et al. 2018, §2); Sinkhorn scales X by diagonals, so M(X) is also
            # the most probable permutation under the soft one. Sinkhorn is only needed for
            # the straight-through gradient, i.e. not on EnvRunners.
            hard = self.assign(log_alpha)
            if torch.is_grad_enabled():
                soft = sinkhorn(log_alpha)
                perm = hard + (soft - soft.detach())  # exact 0/1 forward, soft gradient
            else:
                perm = hard
        else:
            perm = torch.eye(self.n, device=obs.device).expand(b, -1, -1)
        order_mask = perm.transpose(1, 2) @ self.upper @ perm  # Pᵀ M P: [B, n(j), n(i)]
        # U: hard Gumbel-softmax per ordered pair, class 1 = edge (straight-through).
        logits = self.context(obs.reshape(b, -1)).reshape(b, self.n, self.n, 2)
        y = torch.softmax(logits + noise["edge"], dim=-1)
        edge = F.one_hot(y.argmax(-1), 2).to(y.dtype) + (y - y.detach())
        adjacency = edge[..., 1] * order_mask
        order = perm.detach().argmax(-1)  # agent at each position
        return GraphSample(adjacency, order, empty=False)

    def density(self, adjacency: torch.Tensor) -> torch.Tensor:
        """ρ per sample: fraction of the n(n-1)/2 possible edges present (differentiable)."""
        return adjacency.sum((-1, -2)) / max(self.max_edges, 1)

    @torch.no_grad()
    def record(self, adjacency: torch.Tensor, momentum: float = 0.9) -> None:
        """Track edge frequencies and the most frequent graph: this batch's
        (``batch_edge_freq``, ``batch_mode_share``, which the learner averages over an
        iteration's minibatches) and a running record for drawings.

        All on the module's device, with shapes known in advance (``torch.unique`` and
        ``float()`` would make the host wait for the device at every minibatch)."""
        hard = (adjacency.detach() > 0.5).float()
        self.batch_edge_freq = hard.mean(0)
        self.edge_freq.mul_(momentum).add_(self.batch_edge_freq * (1 - momentum))
        flat = hard.reshape(hard.shape[0], -1)
        counts = graph_counts(flat)
        top = counts.argmax().reshape(1)  # a tensor index: indexing by a 0-d tensor reads it back
        self.batch_mode_share = counts.max() / flat.shape[0]
        self.mode_graph.copy_(flat.index_select(0, top).reshape(self.n, self.n))
        self.mode_share.copy_(self.batch_mode_share)


def graph_counts(flat: torch.Tensor) -> torch.Tensor:
    """counts[b] = how many rows of ``flat`` [B, k] (0/1) equal row b, without leaving the
    device: rows become exact integer keys (52 bits per float64 word), are sorted
    lexicographically, and each run of equal keys is counted."""
    b, k = flat.shape
    words = -(-k // 52)
    pad = torch.zeros(b, words * 52 - k, dtype=torch.float64, device=flat.device)
    bits = torch.cat([flat.double(), pad], 1).reshape(b, words, 52)
    weights = 2.0 ** torch.arange(52, dtype=torch.float64, device=flat.device)
    keys = (bits * weights).sum(-1)  # [B, words], exact below 2^53
    order = torch.arange(b, device=flat.device)
    for w in reversed(range(words)):  # stable sorts, least significant word first
        order = order[keys[order, w].argsort(stable=True)]
    sorted_keys = keys[order]
    new_run = torch.ones(b, dtype=torch.bool, device=flat.device)
    new_run[1:] = (sorted_keys[1:] != sorted_keys[:-1]).any(-1)
    run = new_run.long().cumsum(0) - 1  # run id of each sorted row
    sizes = torch.zeros(b, dtype=torch.long, device=flat.device).scatter_add_(0, run, torch.ones_like(run))
    counts = torch.empty_like(sizes)
    counts[order] = sizes[run]
    return counts


def as_numpy_graph(adjacency: torch.Tensor) -> np.ndarray:
    return (adjacency.detach().cpu().numpy() > 0.5).astype(np.int8)
