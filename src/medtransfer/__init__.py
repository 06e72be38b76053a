"""medtransfer: transfer learning on medical images with pretrained ResNets, Lightning and Hydra.

Layout: the commands (train, evaluate, predict, report) at the top; utils/ → evaluation/, finetune/ →
models/, data/ → features/ → callbacks/, loggers/ → commands, each importing only from layers below."""

from omegaconf import OmegaConf

__version__ = "0.2.0"

# `${eq:a,b}` in the configs: one group reading another's value explicitly (model.channels_last follows
# trainer.accelerator)
OmegaConf.register_new_resolver("eq", lambda a, b: a == b, replace=True)
