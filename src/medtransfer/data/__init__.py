"""Data: sources of medical images (class folders, MedMNIST .npz) behind one LightningDataModule."""
