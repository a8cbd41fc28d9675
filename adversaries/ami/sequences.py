"""Per-episode sequences of states and joint actions, rebuilt from an attacker's RLlib batch.

What AMI learns from is all in the attacker's own observations (adversaries/attack_env.py):
row t holds the global state s_t, the legal actions of every team agent at t
("joint_action_mask"), the attacked agents ("attacked"), the victims in sight
("victim_visible"), and the joint action the team executed at t−1 ("prev_joint_action").
So the joint action executed at t is row t+1's ``prev_joint_action``.

By the time the learner connector runs, RLlib's ``AddOneTsToEpisodesAndTruncate`` has appended
one phantom row to every episode chunk (the chunk's last observation; ``LOSS_MASK`` False).
That row is what makes a_{T−1} and the legal actions at T visible, and it marks where one
chunk ends and the next begins. Sequences are padded to the longest chunk, [C, L, ...].
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from ray.rllib.core.columns import Columns

REQUIRED_OBS_KEYS = ("state", "prev_joint_action", "joint_action_mask", "attacked")


@dataclass
class JointSequences:
    state: torch.Tensor  # [C, L, S]      s_t
    joint_action: torch.Tensor  # [C, L, n] (long) or [C, L, n, c]   a_t, executed
    next_action: torch.Tensor  # like joint_action: a_{t+1} (valid where has_next)
    next_mask: torch.Tensor | None  # [C, L, n, A]: legal actions at t+1 (discrete)
    attacked: torch.Tensor  # [C, L, n]  1.0 at the adversary's slots
    visible: torch.Tensor  # [C, L, n]   1.0 for agents in the adversary's sight at t
    reward: torch.Tensor  # [C, L]      the attacker's reward r_adv,t
    valid: torch.Tensor  # [C, L]       1.0 at real steps t < T_c
    has_next: torch.Tensor  # [C, L]    1.0 where a_{t+1} is recorded (t < T_c − 1)
    rows: torch.Tensor  # [C, L] long   the step's row in the flat batch (0 at padding)
    final_state: torch.Tensor  # [C, S]  s_T, the state after the chunk's last step
    bootstrap: torch.Tensor  # [C]       1.0 if the chunk was cut (not terminated)

    @property
    def n_chunks(self) -> int:
        return self.state.shape[0]

    def repeat(self, k: int) -> JointSequences:
        """The same sequences ``k`` times over along the chunk dimension ([k·C, ...])."""
        def rep(x):
            if x is None:
                return None
            return x.repeat(k, *([1] * (x.dim() - 1)))

        return JointSequences(**{f.name: rep(getattr(self, f.name)) for f in fields(self)})

    @classmethod
    def from_batch(cls, batch: dict[str, Any]) -> JointSequences:
        """Build from one module's flat learner batch (columns OBS, REWARDS, TERMINATEDS,
        LOSS_MASK, as RLlib's PPO learner connector leaves them)."""
        obs = batch[Columns.OBS]
        missing = [k for k in REQUIRED_OBS_KEYS if k not in obs]
        if missing:
            raise KeyError(f"attacker observations lack {missing}: AMI needs {REQUIRED_OBS_KEYS}")
        if Columns.LOSS_MASK not in batch:
            raise KeyError("AMI needs the phantom row per episode chunk (LOSS_MASK column)")
        state = torch.as_tensor(obs["state"]).float()
        if state.dim() != 2:
            raise ValueError("AMI expects a flat (non-recurrent) learner batch")
        device = state.device
        real = torch.as_tensor(batch[Columns.LOSS_MASK], device=device).bool()
        b = real.shape[0]
        ends = torch.nonzero(~real).squeeze(-1)  # each chunk's phantom row
        if len(ends) == 0 or int(ends[-1]) != b - 1:
            raise ValueError("every episode chunk must end with a phantom row (LOSS_MASK False)")
        starts = torch.cat([ends.new_zeros(1), ends[:-1] + 1])
        lengths = ends - starts  # T_c real steps
        length = max(int(lengths.max()), 1)
        t = torch.arange(length, device=device)
        idx = starts.unsqueeze(1) + t  # [C, L]
        valid = t < lengths.unsqueeze(1)
        has_next = t < (lengths - 1).unsqueeze(1)

        def at(x, offset: int) -> torch.Tensor:
            x = torch.as_tensor(x, device=device)
            return x[(idx + offset).clamp(max=b - 1)]

        pja = obs["prev_joint_action"]
        discrete = torch.as_tensor(pja).dim() == 2  # [B, n] ids, or [B, n, c] vectors
        joint_action = at(pja, 1)  # a_t = prev_joint_action at row t+1
        next_action = at(pja, 2)  # a_{t+1}
        if discrete:
            joint_action, next_action = joint_action.long(), next_action.long()
        else:
            joint_action, next_action = joint_action.float(), next_action.float()
        attacked = at(obs["attacked"], 0).float()
        visible = at(obs["victim_visible"], 0).float() if "victim_visible" in obs else None
        if visible is None:  # no sight information: every victim counts
            visible = torch.ones_like(attacked)
        rewards = torch.as_tensor(batch[Columns.REWARDS], device=device).float()
        terminated = torch.as_tensor(batch[Columns.TERMINATEDS], device=device).bool()
        vmask = valid.float()
        return cls(
            state=at(state, 0) * vmask.unsqueeze(-1),
            joint_action=joint_action,
            next_action=next_action,
            next_mask=at(obs["joint_action_mask"], 1).float() if discrete else None,
            attacked=attacked,
            visible=visible,
            reward=at(rewards, 0) * vmask,
            valid=vmask,
            has_next=has_next.float(),
            rows=torch.where(valid, idx, torch.zeros_like(idx)),
            final_state=state[ends],
            bootstrap=(~terminated[ends - 1]).float(),
        )
