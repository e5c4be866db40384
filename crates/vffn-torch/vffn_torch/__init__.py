"""vffn models in PyTorch: the four block kinds as torch.nn modules with vffn's exact math,
vffn checkpoints loaded and saved, and a torchrun trainer (`python -m vffn_torch.train`)."""
from .checkpoint import TrainingCheckpoint, load, load_training, save
from .config import Config, TrainConfig
from .model import Output, VffnModel

__all__ = ["Config", "TrainConfig", "VffnModel", "Output", "load", "load_training", "save",
           "TrainingCheckpoint"]
