"""PPO loss per agent on a team's joint policy (MAPPO, IPPO and BN-MAPPO share it).

For each agent i, the clipped surrogate (Schulman et al. 2017, eq. 7) is taken on the ratio of
its *conditional* policy, π_i(a_i | o_i, a_Pa(i)) new / old (Chen & Zhang 2023, eq. 6), with
the team's GAE advantage (shared by all agents under a centralised critic, per agent under
IPPO). Dead agents are masked out. The value loss is MAPPO's Huber loss on normalised
targets (Yu et al. 2022), and the entropy bonus is the mean per-agent entropy. A learned DAG
adds its density term α·E_b|ρ_b − τ| (Chen & Zhang 2023, eq. 9), with τ and α annealed over training
(``marl.graphs.annealing``).

Two timescales: ``learner_config_dict["update_every"] = {module_id: K}`` updates such a
module on every K-th learner update only (the K-th, 2K-th, ...), while the others update at
every one; its share of the other batches is dropped before the minibatch loop, so its
weights, value normalisation and optimizer state stay untouched in between. The count of
updates is part of the Learner's checkpointed state.

Agent modelling (CLAM, Ma et al. 2024): a module whose ``agent_model`` is set also trains its
encoder here, with its own Adam (``agent_modeling.lr``) over the encoder and projection head
only, on NT-Xent batches drawn from an episode buffer of finished episodes
(marl/learners/episode_buffer.py): one encoder step per ``encoder_every`` PPO minibatch steps,
once the buffer holds ``min_episodes``. The contrastive loss is added to the module's total; the
policy's optimizer holds none of the encoder's parameters and the actor reads a detached
representation, so each optimizer steps on its own loss only (RLlib clips gradients per
optimizer). After every step the EMA encoder moves toward the online one. With several Learners
the encoder stays out of DDP (it is not in the module's forward pass); its gradients are
averaged over the Learners, which step it on the same minibatches.

Recurrent modules (``model.recurrent``) arrive as RLlib's zero-padded [B, T] sequences with a
loss mask (``AddTimeDimToBatchAndZeroPad``); the module runs each sequence from its stored
state, and the loss flattens the steps and counts the real ones only (padding, like RLlib's
bootstrap row, is masked), so every term is a mean over the same (step, agent) slots as
without recurrence.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.common import AddTimeDimToBatchAndZeroPad
from ray.rllib.connectors.learner import GeneralAdvantageEstimation
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from marl.graphs.annealing import DensitySchedule
from marl.learners.episode_buffer import EpisodeBuffer, FinishedEpisodes
from marl.learners.executed import EXECUTED, ExecutedActions
from marl.learners.gae import TeamGAE
from marl.modules.joint_policy import DAG_DENSITY, flatten_time

HUBER_DELTA = 10.0


class JointPPOLearner(PPOTorchLearner):
    def build(self) -> None:
        super().build()
        extra = self.config.learner_config_dict or {}
        self.density_schedule = DensitySchedule(**extra["density"]) if "density" in extra else None
        self.total_env_steps = extra.get("total_env_steps")
        self.progress_iteration = 0.0
        self.update_every: dict[str, int] = dict(extra.get("update_every") or {})
        self.update_count = 0  # learner updates done (one per training iteration)
        self._resting: set[str] = set()  # modules that skip the current update
        if self._learner_connector is not None:
            # Swap RLlib's single-column GAE for the team version (per-agent critics allowed).
            self._learner_connector.remove(GeneralAdvantageEstimation)
            self._learner_connector.append(
                TeamGAE(gamma=self.config.gamma, lambda_=self.config.lambda_)
            )
            # Per (step, agent): was the sampled action executed? (partial control) Added
            # before the time dimension, so recurrent modules get it zero-padded like the rest.
            self._learner_connector.insert_before(AddTimeDimToBatchAndZeroPad, ExecutedActions())
            # Finished episodes' prefixes, for the agent models' encoders.
            self._learner_connector.prepend(FinishedEpisodes(sink=self._store_episodes))
        self.episode_buffers: dict[str, EpisodeBuffer] = {}
        self._minibatch_steps: dict[str, int] = {}  # this update's, per module (reset each update)
        self._encoder_stepped: set[str] = set()  # modules whose encoder trains on this minibatch
        # The views' random crops and masks are drawn on the learner's device (a CUDA op
        # refuses a CPU generator).
        self._contrastive_rng = torch.Generator(device=self._device).manual_seed(self.config.seed or 0)

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        # Frozen and scripted teams are never updated: no optimizer (a scripted team has no
        # parameters at all).
        if not self.should_module_be_updated(module_id):
            return
        module = self._module[module_id].unwrapped()
        if not getattr(module, "models_agents", False):
            super().configure_optimizers_for_module(module_id=module_id, config=config)
            return
        # Two optimizers: the policy and critic (PPO's lr), and the agent model's encoder.
        model = module.agent_model
        own = {id(p) for p in model.parameters()}
        policy = [p for p in module.parameters() if id(p) not in own]
        self.register_optimizer(
            module_id=module_id, optimizer=torch.optim.Adam(policy), params=policy,
            lr_or_lr_schedule=config.lr,
        )
        encoder = list(model.online_parameters())
        self.register_optimizer(
            module_id=module_id, optimizer_name="agent_model", optimizer=torch.optim.Adam(encoder),
            params=encoder, lr_or_lr_schedule=self._agent_modeling(module)["lr"],
        )

    # ...................................................... several Learners (DDP)
    def _make_modules_ddp_if_necessary(self) -> None:
        """With ``runners.num_learners`` ≥ 2 RLlib wraps each module in DDP, whose reducer waits
        for a gradient of every parameter once the module's forward pass has run. An agent
        model's encoder is not in that pass (the actor reads the stored representation) and
        trains on its own loss, on some minibatch steps only, so DDP would stop the update
        ("Expected to have finished reduction"). It is left out of DDP, started from rank 0's
        weights like the rest, and its gradients are averaged here (``compute_gradients``)."""
        distributed = self.config.num_learners > 1
        for module_id in self.module.keys() if distributed else ():
            module = self.module[module_id]
            if getattr(module, "models_agents", False):
                model = module.agent_model
                module._ddp_params_and_buffers_to_ignore = [
                    f"agent_model.{name}" for name, _ in [*model.named_parameters(), *model.named_buffers()]]
        super()._make_modules_ddp_if_necessary()
        if _world_size() > 1:
            for model in self._agent_models():
                for tensor in [*model.parameters(), *model.buffers()]:
                    torch.distributed.broadcast(tensor.data, src=0)

    def _agent_models(self) -> list[torch.nn.Module]:
        modules = {mid: self.module[mid].unwrapped() for mid in self.module.keys()}
        return [m.agent_model for mid, m in modules.items() if getattr(m, "models_agents", False)]

    def compute_gradients(self, loss_per_module, **kwargs):
        gradients = super().compute_gradients(loss_per_module, **kwargs)
        world = _world_size()
        if world > 1:  # the encoders DDP leaves out: the mean gradient over the Learners
            for module_id in sorted(self._encoder_stepped):  # the same on every Learner
                model = self.module[module_id].unwrapped().agent_model
                for p in model.online_parameters():
                    if p.grad is None:  # a parameter this loss did not reach
                        p.grad = torch.zeros_like(p)
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
                # Running statistics (the projection's batch norm): the Learners' mean.
                for buf in model.buffers():
                    if buf.is_floating_point():
                        torch.distributed.all_reduce(buf)
                        buf /= world
        return gradients

    @staticmethod
    def _agent_modeling(module) -> dict[str, Any]:
        return dict(module.model_config["agent_modeling"])

    def _store_episodes(self, module_id: str, hist, lengths) -> None:
        if not self.should_module_be_updated(module_id):  # a frozen team's encoder never trains
            return
        if module_id not in self.episode_buffers:
            am = self._agent_modeling(self._module[module_id].unwrapped())
            self.episode_buffers[module_id] = EpisodeBuffer(
                am.get("buffer_episodes", 10000), hist.shape[1], hist.shape[2], seed=self.config.seed or 0,
                device=self._device,
            )
        self.episode_buffers[module_id].add(hist, lengths)

    def _contrastive_term(self, module_id: str, module) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """This minibatch step's agent-model loss (or None: buffer too small, or not its turn)."""
        am = self._agent_modeling(module)
        buffer = self.episode_buffers.get(module_id)
        stats: dict[str, Any] = {"agent_model/buffer_episodes": 0 if buffer is None else buffer.size}
        count = self._minibatch_steps.get(module_id, 0)
        self._minibatch_steps[module_id] = count + 1
        # The 1st, (1+k)-th, (1+2k)-th ... minibatch step of each update: every update trains
        # the encoder at least once (and logs its loss: a metric missing from one iteration
        # would read as NaN).
        if count % am.get("encoder_every", 1):  # the same count on every Learner
            return None, stats
        size = 0 if buffer is None else buffer.size
        if _world_size() > 1:  # the smallest buffer of all Learners: all step, or none does
            size_t = torch.tensor([size], device=self._device)
            torch.distributed.all_reduce(size_t, op=torch.distributed.ReduceOp.MIN)
            size = int(size_t.item())
        if size < am.get("min_episodes", 16):
            return None, stats
        self._encoder_stepped.add(module_id)
        hist, lengths = buffer.sample(am.get("batch_episodes", 512))  # on the learner's device
        loss, extra = module.agent_model.contrastive_loss(hist, lengths, self._contrastive_rng)
        stats.update({f"agent_model/{k}": v for k, v in extra.items()})
        return loss, stats

    def apply_gradients(self, gradients_dict) -> None:
        super().apply_gradients(gradients_dict)
        # The acting encoder follows the online one after each encoder step (CLAM: momentum
        # 0.99 per encoder update); not on PPO-only steps, nor for a resting module.
        for module_id in self._encoder_stepped:
            self.module[module_id].unwrapped().agent_model.ema_update()
        self._encoder_stepped.clear()

    def should_module_be_updated(self, module_id, multi_agent_batch=None) -> bool:
        if not super().should_module_be_updated(module_id, multi_agent_batch):
            return False
        # RLlib asks with the batch only when it filters the train batch: a module on the
        # slow timescale sits out the updates between its every K-th.
        return multi_agent_batch is None or module_id not in self._resting

    def get_state(self, *args, **kwargs):
        return {**super().get_state(*args, **kwargs), "update_count": self.update_count}

    def set_state(self, state) -> None:
        super().set_state(state)
        self.update_count = int(state.get("update_count", self.update_count))

    def before_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().before_gradient_based_update(timesteps=timesteps)
        self.update_count += 1
        self._resting = {m for m, k in self.update_every.items() if self.update_count % k}
        self._minibatch_steps.clear()
        steps = timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0)
        self._sync_schedules(steps)
        if self.density_schedule is not None and self.total_env_steps:
            self.progress_iteration = steps / self.total_env_steps * self.density_schedule.total_iterations

    def _sync_schedules(self, steps: int) -> None:
        """Set every scheduled value (entropy coefficient, learning rates) to the schedule at
        the lifetime env-step count *before* this update's gradient steps.

        RLlib's ``Scheduler`` starts at the schedule's first value and moves only in
        ``after_gradient_based_update``, so after a restore the first update used step 0's
        entropy coefficient. Both an uninterrupted and a resumed run now use schedule(steps),
        where steps counts every env step sampled so far, this iteration's batch included."""
        for module_id in self.module.keys():
            if self.should_module_be_updated(module_id):
                self.entropy_coeff_schedulers_per_module[module_id].update(timestep=steps)
        for optimizer, schedule in self._optimizer_lr_schedules.items():
            self._set_optimizer_lr(optimizer, lr=schedule.update(timestep=steps))

    def compute_loss_for_module(self, *, module_id, config, batch: dict[str, Any], fwd_out):
        module = self.module[module_id].unwrapped()
        if getattr(module, "recurrent", None) is not None and module.has_time_dim(batch):
            b, t = batch[Columns.OBS]["obs"].shape[:2]  # [B, T] sequences: one row per step
            batch, fwd_out = flatten_time(batch, b, t), flatten_time(fwd_out, b, t)
        density = None
        if DAG_DENSITY in fwd_out and self.density_schedule is not None:
            density = (
                self.density_schedule.tau(self.progress_iteration),
                self.density_schedule.alpha(self.progress_iteration),
            )
        total, stats = joint_ppo_loss(
            module, batch, fwd_out,
            clip_param=config.clip_param,
            vf_loss_coeff=config.vf_loss_coeff,
            entropy_coeff=self.entropy_coeff_schedulers_per_module[module_id].get_current_value(),
            density=density,
        )
        if getattr(module, "models_agents", False):
            term, extra = self._contrastive_term(module_id, module)
            stats.update(extra)
            if term is not None:
                total = total + term
        if DAG_DENSITY in fwd_out:
            # This minibatch's share of steps with each edge, and of the most frequent graph.
            freq, share = module.graph.batch_edge_freq, module.graph.batch_mode_share
            for j in range(module.n):
                for i in range(module.n):
                    if j != i:
                        stats[f"edge_freq/{j}->{i}"] = freq[j, i]
            stats["dag_mode_share"] = share
        # Mean over every minibatch of the iteration (RLlib's MeanStats with no window empties
        # itself at each reduce, i.e. once per training iteration).
        self.metrics.log_dict(stats, key=module_id, reduce="mean")
        return total


def _world_size() -> int:
    """The number of Learners training together (1 without torch.distributed)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def joint_ppo_loss(
    module,
    batch: dict[str, Any],
    fwd_out: dict[str, Any],
    *,
    clip_param: float,
    vf_loss_coeff: float,
    entropy_coeff: float,
    density: tuple[float, float] | None = None,
    update_value_norm: bool = True,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The team's PPO loss; ``density`` = (τ, α) adds the graph term. Returns (loss, stats)."""
    n, A = module.n, module.A
    obs = batch[Columns.OBS]
    actions = batch[Columns.ACTIONS]
    b = actions.shape[0]

    params = fwd_out[Columns.ACTION_DIST_INPUTS].reshape(b, n, A)
    old_params = batch[Columns.ACTION_DIST_INPUTS].reshape(b, n, A)
    logp = module.head.logp(params, actions)  # [B, n]: log π_i(a_i | o_i, a_Pa(i))
    old_logp = module.head.logp(old_params, actions)

    step_mask = batch.get(Columns.LOSS_MASK)
    step_mask = torch.ones(b, device=logp.device) if step_mask is None else step_mask.float()
    agent_mask = obs["alive"] * step_mask.unsqueeze(-1)  # [B, n]
    valid = agent_mask > 0
    n_valid = agent_mask.sum().clamp(min=1.0)

    def masked_mean(x: torch.Tensor) -> torch.Tensor:
        # Select, never multiply: a dead or padded slot may hold inf or NaN (a continuous dead
        # agent's zero action under a far mean and a small std), and inf·0 is NaN.
        return torch.where(valid, x, torch.zeros_like(x)).sum() / n_valid

    # The surrogate leaves out actions the env did not execute (marl/learners/executed.py:
    # a partially controlled agent's replaced action, an attacker's dropped one).
    executed = batch.get(EXECUTED)
    acted = valid if executed is None else valid & (executed.reshape(b, n) > 0)
    n_acted = acted.sum().clamp(min=1)

    # The log-ratio is masked before exp, so masked slots have ratio exactly 1.
    log_ratio = torch.where(acted, logp - old_logp, torch.zeros_like(logp))
    ratio = torch.exp(log_ratio)

    # Clipped surrogate per agent (Schulman et al. 2017, eq. 7) with the team advantage.
    adv = batch[Postprocessing.ADVANTAGES].reshape(b, -1).expand(b, n)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_param, 1 + clip_param) * adv)
    policy_loss = -torch.where(acted, surrogate, torch.zeros_like(surrogate)).sum() / n_acted
    mean_entropy = masked_mean(module.head.entropy(params))

    # Value loss on normalised targets (Yu et al. 2022: value normalisation + Huber loss).
    targets = batch[Postprocessing.VALUE_TARGETS].reshape(b, -1)
    preds = fwd_out[Columns.VF_PREDS].reshape(b, -1)
    v_mask = (step_mask.unsqueeze(-1) if module.centralized else agent_mask).expand_as(targets)
    if module.use_value_norm:
        if update_value_norm:  # real steps only; under IPPO, alive agents' columns only
            module.value_norm.update(targets, v_mask)
        targets = module.value_norm.normalize(targets)
    vf_err = F.huber_loss(preds, targets, reduction="none", delta=HUBER_DELTA)
    vf_loss = torch.where(v_mask > 0, vf_err, torch.zeros_like(vf_err)).sum() / v_mask.sum().clamp(min=1.0)

    total = policy_loss + vf_loss_coeff * vf_loss - entropy_coeff * mean_entropy
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).sum() / n_acted  # 0 at masked slots
        clip_frac = torch.where(acted, (ratio - 1).abs() > clip_param, False).float().sum() / n_acted
        # Explained variance of the (normalised) value targets, 1 - Var[y - v] / Var[y]: 1 is a
        # perfect critic, 0 no better than a constant.
        # Masked moments, not boolean indexing: no host sync (tests/test_device.py).
        real = v_mask.expand_as(targets) > 0
        n_real = real.sum()

        def masked_var(x: torch.Tensor) -> torch.Tensor:
            x = torch.where(real, x, torch.zeros_like(x))
            mean = x.sum() / n_real.clamp(min=1)
            return torch.where(real, (x - mean) ** 2, torch.zeros_like(x)).sum() / n_real.clamp(min=1)

        explained_var = torch.where(
            n_real > 1, 1 - masked_var(targets - preds) / masked_var(targets).clamp(min=1e-8),
            torch.zeros((), device=targets.device),
        )
    stats: dict[str, Any] = {
        POLICY_LOSS_KEY: policy_loss,
        VF_LOSS_KEY: vf_loss,
        ENTROPY_KEY: mean_entropy,
        "approx_kl": approx_kl,
        "clip_fraction": clip_frac,
        "vf_explained_var": explained_var,
    }
    if density is not None and DAG_DENSITY in fwd_out:
        # Density term α · E_b |ρ_b − τ| (Chen & Zhang 2023, eq. 9, with ρ per sampled graph):
        # the batch mean of each sample's distance to the target, so that every sampled graph
        # is pushed to density τ. |E_b ρ_b − τ| would be satisfied by a mix of empty and full
        # graphs at intermediate τ.
        tau, alpha = density
        rho = fwd_out[DAG_DENSITY]  # [B]
        n_steps = step_mask.sum().clamp(min=1.0)
        gap = torch.where(step_mask > 0, (rho - tau).abs(), torch.zeros_like(rho)).sum() / n_steps
        total = total + alpha * gap
        mean_rho = torch.where(step_mask > 0, rho, torch.zeros_like(rho)).sum() / n_steps
        stats.update(dag_density=mean_rho, dag_density_gap=gap, dag_tau=tau, dag_alpha=alpha)
    stats["total_loss"] = total
    return total, stats
