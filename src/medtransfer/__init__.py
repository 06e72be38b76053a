"""medtransfer: transfer learning on medical images with pretrained ResNets, Lightning and Hydra."""

__version__ = "0.1.0"
