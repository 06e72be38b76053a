"""Networks: ResNet backbones, classification heads and the LightningModule that joins them."""
