"""Metrics in the Hugging Face `evaluate` format, each folder loadable with `evaluate.load(path)`."""

import os

PREFERENCE_ACCURACY = os.path.join(os.path.dirname(__file__), "preference_accuracy")
