"""Data: sources of medical images (class folders, CSV manifests, MedMNIST .npz) behind one LightningDataModule;
decoding, validation, splits and caching for file sources. See docs/data.md."""
