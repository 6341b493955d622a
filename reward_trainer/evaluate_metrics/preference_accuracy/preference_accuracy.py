"""Preference accuracy as a Hugging Face `evaluate` metric, shipped inside the package and loadable offline.

>>> import evaluate
>>> from reward_trainer.evaluate_metrics import PREFERENCE_ACCURACY
>>> metric = evaluate.load(PREFERENCE_ACCURACY)
>>> metric.compute(chosen_rewards=[2.0, 0.0, 1.0], rejected_rewards=[1.0, 1.0, 1.0], ties=[0, 0, 0])
{'accuracy': 0.5}

(right, wrong, and an equal score that counts 0.5)
"""

import datasets
import evaluate

from reward_trainer.metrics import pair_correctness

_DESCRIPTION = """The fraction of preference pairs whose chosen response gets the higher reward. A pair the model
scores equally, or one the annotators called a tie (`ties` = 1), counts 0.5."""

_KWARGS_DESCRIPTION = """
Args:
    chosen_rewards (list of float): the reward of each pair's chosen response.
    rejected_rewards (list of float): the reward of each pair's rejected response.
    ties (list of float): 1 where annotators called the pair a tie, else 0.
Returns:
    accuracy (float): in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PreferenceAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "chosen_rewards": datasets.Value("float64"),
                    "rejected_rewards": datasets.Value("float64"),
                    "ties": datasets.Value("float64"),
                }
            ),
        )

    def _compute(self, chosen_rewards, rejected_rewards, ties):
        return {"accuracy": float(pair_correctness(chosen_rewards, rejected_rewards, ties).mean())}
