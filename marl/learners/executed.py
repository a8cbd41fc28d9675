"""Which of a team's sampled actions the env actually executed, as a loss mask.

Some envs execute another action than the one a team's policy sampled for an agent: a
partially controlled agent (Liu et al. 2024, ICLR: π_α = (1−ε)·π̂_α + ε·π̃), where with
probability ε the attacker's action replaces the agent's own, and likewise the attacker's
action is dropped on the steps it does not control. Such an env reports, in the infos it
returns with the next observation, ``executed``: one flag per agent of the team (absent: all
executed).

A sampled action that was not executed had no effect on the return, so its score-function
term ∇log π(a)·A is pure noise (zero in expectation): the PPO surrogate leaves those
(step, agent) slots out, as it leaves out dead agents. The critic still learns from every
step, since the value of a state under the mixed policy counts them all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.connectors.connector_v2 import ConnectorV2

from envs.adapter import EXECUTED_INFO

EXECUTED = EXECUTED_INFO  # info key and batch column: [T, n] flags, 1 = the sampled action ran


class ExecutedActions(ConnectorV2):
    """Learner connector piece: the ``executed`` column, per step and agent, from the infos.

    It runs on episodes already extended by RLlib's one bootstrap step, before the batch is
    mapped to modules, so it adds one row per timestep as every other column does. The info
    for action t comes with observation t+1 (``infos[t + 1]``)."""

    def __call__(self, *, rl_module, batch: dict[str, Any], episodes, **kwargs):
        # One pass over the infos; a module gets the column only if some episode of its
        # reports flags (then every episode of it, unflagged steps = executed). Plain training
        # adds nothing to the batch and the loss takes its unmasked path.
        rows_of = []
        for sa_episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            module = rl_module[sa_episode.module_id] if sa_episode.module_id in rl_module else None
            n = getattr(module.unwrapped(), "n", None) if module is not None else None
            if n is None:  # not a team module (nothing to mask)
                continue
            rows, flagged = np.ones((len(sa_episode), n), np.float32), False
            for t, info in enumerate(sa_episode.get_infos()[1:][: len(rows)]):
                if isinstance(info, dict) and EXECUTED in info:
                    rows[t] = np.asarray(info[EXECUTED], np.float32).reshape(n)
                    flagged = True
            rows_of.append((sa_episode, rows, flagged))
        masked = {ep.module_id for ep, _, flagged in rows_of if flagged}
        for sa_episode, rows, _ in rows_of:
            if sa_episode.module_id in masked:
                self.add_n_batch_items(batch, EXECUTED, list(rows), len(rows), sa_episode)
        return batch
