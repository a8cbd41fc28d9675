"""AMI's coefficients, with the authors' values as defaults (Li et al., arXiv 2302.03322).

The values come from the authors' code (DESIGN.md, "Method: AMI"): the SMAC branch (EPyMARL
fork) for the discrete attack, the MaMuJoCo branch (MAPPO codebase) for the continuous one.
Where a value is branch-specific, the field says so.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AMIParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Shaped reward. Discrete: r' = r_adv − λ·s_t, then standardised (running mean/std).
    # Continuous: r' = r_adv + likelihood_coeff · Σ_j,dims mean_k N(target | MAA(...)).
    influence_coeff: float = Field(0.1, ge=0.0, description="λ, discrete branch")
    likelihood_coeff: float = Field(1.0, ge=0.0, description="continuous branch")
    influence_samples: int = Field(10, ge=1, description="K counterfactual adversary actions")
    # None = the authors' choice per branch: standardise in the discrete (EPyMARL) branch only.
    standardize_reward: bool | None = None

    # Victims' action model (MAA): FC → ReLU → GRUCell → FC, Adam.
    hidden: int = Field(64, ge=1)
    maa_lr: float = Field(1e-4, gt=0.0, description="SMAC 1e-4; MaMuJoCo 5e-4")
    maa_epochs: int = Field(4, ge=1)
    maa_gru_continuous: bool = False  # continuous MAA: MLP 64, the GRU optional

    # Targeted oracle: same network as the MAA, PPO-clip without entropy, own critic.
    oracle_lr: float = Field(1e-4, gt=0.0, description="SMAC 1e-4; MaMuJoCo 5e-4")
    oracle_critic_lr: float = Field(1e-4, gt=0.0, description="SMAC 1e-4; MaMuJoCo 5e-3")
    oracle_epochs: int = Field(4, ge=1, description="one step per adversary PPO epoch")
    oracle_clip: float = Field(0.2, gt=0.0)
    oracle_critic_hidden: int = Field(64, ge=1)
    # The oracle critic's targets: n-step returns from a soft-updated target critic
    # (EPyMARL's PPO defaults: q_nstep 5, target_update_interval_or_tau 0.01).
    oracle_nstep: int = Field(5, ge=1)
    oracle_target_tau: float = Field(0.01, gt=0.0, le=1.0)
    gamma: float = Field(0.99, ge=0.0, le=1.0)

    grad_clip: float = Field(10.0, gt=0.0)
