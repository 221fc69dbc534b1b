"""Training a flow: the loop (`loop`), its schedule (`schedule`), resumable state (`state`) and Polyak
weights (`polyak`); the command line is `model.train`."""

from .loop import SUBNET_DTYPES, Trainer, TrainingError, subnet_dtype
from .polyak import PolyakAverage
from .schedule import Schedule
from .state import STATE_TENSORS, Progress, TrainState, read_train_state, save_train_state

__all__ = [
    "STATE_TENSORS",
    "SUBNET_DTYPES",
    "PolyakAverage",
    "Progress",
    "Schedule",
    "TrainState",
    "Trainer",
    "TrainingError",
    "read_train_state",
    "save_train_state",
    "subnet_dtype",
]
