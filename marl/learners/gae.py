"""GAE on a team's critic, for one value per step (centralised) or one per agent (IPPO).

RLlib's GeneralAdvantageEstimation connector handles one value column. MAPPO shares one team
advantage across agents (Yu et al. 2022); IPPO gives each agent its own V(o_i). This learner
connector piece computes both, column by column, with RLlib's ``compute_value_targets``
(Schulman et al. 2016, eq. 16), then standardises advantages over the real (non-padding)
time steps.
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
            v = v.reshape(v.shape[0], -1)  # [T, k]
            rew, term, trunc = (
                convert_to_numpy(module_batch[c]).astype(np.float32)
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
                valid = convert_to_numpy(module_batch[Columns.LOSS_MASK]).astype(bool)
            else:
                valid = np.ones(len(adv), bool)
            valid = np.broadcast_to(valid[:, None], adv.shape)
            if adv.shape[1] > 1:  # per-agent critics (IPPO): dead agents' columns do not count
                alive = convert_to_numpy(module_batch[Columns.OBS]["alive"]).astype(bool)
                valid = valid & alive
            mean, std = adv[valid].mean(), adv[valid].std()
            adv = (adv - mean) / max(std, 1e-4)
            module_batch[Postprocessing.ADVANTAGES] = torch.as_tensor(adv, device=device)
            module_batch[Postprocessing.VALUE_TARGETS] = torch.as_tensor(targets, device=device)
        return batch
