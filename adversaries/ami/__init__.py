"""AMI, adversarial minority influence (Li et al.): a black-box takeover attack on a cooperative
team. Importing this package registers the ``ami`` plugin.

- ``maa.py``: the victims' action model (MAA), predicting the victims' actions at t+1;
- ``oracle.py``: the targeted oracle and its critic, trained by PPO-clip;
- ``influence.py``: the unilateral influence s_t (continuous: the target likelihood);
- ``reward.py``: the shaped reward and its running standardisation;
- ``sequences.py``: per-episode sequences rebuilt from the attacker's RLlib batch;
- ``shaping.py``: one training call (targets, shaped reward, MAA and oracle updates);
- ``learner.py``: ``AMILearner``, the joint PPO learner with the shaping before GAE;
- ``plugin.py``: ``AMIPlugin`` and its coefficients (``params.py``).
"""

from adversaries.ami.params import AMIParams
from adversaries.ami.plugin import AMIPlugin

__all__ = ["AMIParams", "AMIPlugin"]
