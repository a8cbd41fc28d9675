"""GAE on a team's critic, for one value per step (centralised) or one per agent (IPPO).

RLlib's GeneralAdvantageEstimation connector handles one value column. MAPPO shares one team
advantage across agents (Yu et al. 2022); IPPO gives each agent its own V(o_i). This learner
connector piece computes both, column by column, with RLlib's ``compute_value_targets``
(Schulman et al. 2016, eq. 16), then standardises advantages over the real (non-padding)
time steps.

A recurrent module's batch holds zero-padded [B, T] sequences (RLlib's
``AddTimeDimToBatchAndZeroPad``): its values come from the critic run over each sequence from
the sequence's stored state, so the bootstrap row RLlib appends to every episode chunk gets
the value at the state reached after the chunk's last step. The padding is cut out (by
``SEQ_LENS``) before GAE, which then sees the episodes' steps back to back as without
recurrence, and the results are padded again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.postprocessing.value_predictions import compute_value_targets


class TeamGAE(ConnectorV2):
    def __init__(self, input_observation_space=None, input_action_space=None, *, gamma, lambda_):
        super().__init__(input_observation_space, input_action_space)
        self.gamma, self.lambda_ = gamma, lambda_

    def __call__(self, *, rl_module, episodes, batch: dict[str, Any], **kwargs):
        for module_id, module_batch in batch.items():
            module = rl_module[module_id]
            if not isinstance(module.unwrapped(), ValueFunctionAPI):
                continue
            with torch.no_grad():
                values = module.unwrapped().compute_values(module_batch)
            device = values.device
            v = convert_to_numpy(values).astype(np.float32)
            real = None  # [B, T]: the real rows of zero-padded sequences
            if Columns.SEQ_LENS in module_batch:
                seq_lens = convert_to_numpy(module_batch[Columns.SEQ_LENS])
                real = np.arange(v.shape[1])[None, :] < seq_lens[:, None]
                v = v[real]
            v = v.reshape(v.shape[0], -1)  # [T, k]

            def column(c, real=real):
                x = convert_to_numpy(c)
                return x if real is None else x[real]

            rew, term, trunc = (
                column(module_batch[c]).astype(np.float32)
                for c in (Columns.REWARDS, Columns.TERMINATEDS, Columns.TRUNCATEDS)
            )
            targets = np.stack(
                [
                    compute_value_targets(v[:, k], rew, term, trunc, self.gamma, self.lambda_)
                    for k in range(v.shape[1])
                ],
                axis=1,
            )
            adv = targets - v
            if Columns.LOSS_MASK in module_batch:
                valid = column(module_batch[Columns.LOSS_MASK]).astype(bool)
            else:
                valid = np.ones(len(adv), bool)
            valid = np.broadcast_to(valid[:, None], adv.shape)
            if adv.shape[1] > 1:  # per-agent critics (IPPO): dead agents' columns do not count
                alive = column(module_batch[Columns.OBS]["alive"]).astype(bool)
                valid = valid & alive
            mean, std = adv[valid].mean(), adv[valid].std()
            adv = (adv - mean) / max(std, 1e-4)
            if real is not None:  # back to the zero-padded [B, T, k] layout
                adv, targets = (_pad(x, real) for x in (adv, targets))
            module_batch[Postprocessing.ADVANTAGES] = torch.as_tensor(adv, device=device)
            module_batch[Postprocessing.VALUE_TARGETS] = torch.as_tensor(targets, device=device)
        return batch


def _pad(x: np.ndarray, real: np.ndarray) -> np.ndarray:
    """[N, k] rows -> [B, T, k], placed at the ``real`` [B, T] positions, zeros elsewhere."""
    out = np.zeros((*real.shape, *x.shape[1:]), x.dtype)
    out[real] = x
    return out
