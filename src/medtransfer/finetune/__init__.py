"""How a pretrained network is adapted, generic over the layer-group names its model declares: freezing
strategies, per-group learning-rate scales, param groups, lr schedulers and the layer-group table.
Imports only utils/."""
