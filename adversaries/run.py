"""``run.py attack`` and the resume of an attack run.

The attacker trains through the project's own Trainer (run directory, metrics.jsonl,
TensorBoard, checkpoints, progress, NaN stop), with an RLlib algorithm config assembled by
``marl.algorithms.build_ppo``: the same PPO assembly as team training, on the AttackEnv with
one agent, ``attacker``. Then clean vs attacked are evaluated on paired seeds
(``adversaries.evaluation``). Plugins that do not train only evaluate.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec

from adversaries.attack_env import AttackEnv
from adversaries.base import ATTACKER
from adversaries.config import AttackSetup, attack_config_from_file
from adversaries.evaluation import EVAL_FILE, evaluate_attack
from marl.algorithms import build_ppo, learner_extras
from marl.checkpoints import latest_checkpoint
from marl.errors import BuildFailed, UserError
from marl.resources import check_cluster
from marl.train import (
    RUN_STATE,
    RunState,
    Trainer,
    crash_reported,
    create_run_dir,
    describe_build_failure,
    init_ray,
    truncate_metrics,
    write_config,
)


def attack_algorithm_config(setup: AttackSetup) -> AlgorithmConfig:
    """PPO on the attack env: the attacker is the only RLlib agent, and the only one that learns."""
    plugin = setup.plugin()
    return build_ppo(
        setup.cfg,
        env=AttackEnv,
        env_config=setup.env_config(),
        rl_module_spec=MultiRLModuleSpec(rl_module_specs={ATTACKER: plugin.module_spec()}),
        policies={ATTACKER},
        policies_to_train=[ATTACKER],
        learner_class=plugin.learner_class(),
        learner_config={**learner_extras(setup.cfg), **plugin.learner_config()},
    )


def _train_and_evaluate(setup: AttackSetup, run_dir: Path, state: RunState | None = None,
                        resume_from: Path | None = None, fresh: bool = False) -> Path:
    if not setup.plugin_cls.trains:
        evaluate_attack(setup, run_dir)
        return run_dir
    trainer = Trainer(setup.cfg, run_dir, state, build_config=lambda _: attack_algorithm_config(setup))
    try:
        try:
            trainer.build(resume_from=resume_from)
        except UserError:  # e.g. more runners or GPUs than the cluster has: exit 2
            trainer.stop()
            if fresh:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        except Exception as e:  # as `train`: nothing trained, no new run directory left behind
            trainer.stop()
            if fresh:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise BuildFailed(describe_build_failure(setup.cfg, e)) from e
        with crash_reported(run_dir):
            trainer.run()
        with crash_reported(run_dir, "evaluating the attack"):
            evaluate_attack(setup, run_dir, trainer.algo.get_module(ATTACKER), trainer.state.env_steps)
    finally:
        trainer.stop()
    return run_dir


def attack(setup: AttackSetup) -> Path:
    run_dir = create_run_dir(setup.cfg)
    (run_dir / "plots").mkdir()
    write_config(setup.cfg, run_dir / "config.yaml")
    print(f"run directory: {run_dir}", file=sys.stderr)
    return _train_and_evaluate(setup, run_dir, fresh=True)


def load_attack_run(run_dir: Path) -> tuple[AttackSetup, Path | None, RunState]:
    """An attack run's setup, its last checkpoint (None for a plugin that does not train)
    and its run state, or a UserError."""
    if not run_dir.is_dir():
        raise UserError(f"run directory '{run_dir}' does not exist")
    setup = attack_config_from_file(run_dir / "config.yaml")
    if not setup.plugin_cls.trains:
        return setup, None, RunState()
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"run directory '{run_dir}' has no checkpoint under checkpoints/ to resume from")
    try:
        state = RunState(**json.loads((ckpt / RUN_STATE).read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise UserError(f"'{ckpt / RUN_STATE}' is not a valid run state ({e})") from None
    return setup, ckpt, state


def resume_attack(run_dir: Path) -> Path:
    setup, ckpt, state = load_attack_run(run_dir)
    if ckpt is None:  # nothing trains: evaluate (again)
        print(f"re-evaluating {run_dir} (adversary '{setup.cfg.adversary.name}' does not train)", file=sys.stderr)
        return _train_and_evaluate(setup, run_dir)
    init_ray()
    check_cluster(setup.cfg.runners)  # before anything in the run directory changes
    truncate_metrics(run_dir / "metrics.jsonl", state.iteration)
    (run_dir / EVAL_FILE).unlink(missing_ok=True)  # rewritten after training
    print(f"resuming {run_dir} from {ckpt.name} (env step {state.env_steps})", file=sys.stderr)
    return _train_and_evaluate(setup, run_dir, state, resume_from=ckpt)
