"""Networks: backbones and their anatomy (layer groups, stem, Grad-CAM layer), heads, the
LightningModule that joins them, and checkpoint loading. Imports utils/, finetune/ and evaluation/,
never data/."""
