"""Data: one LightningDataModule over every source (sources/: class folders, CSV manifests, MedMNIST
.npz, mirroring conf/data/), datasets, transforms and splits; files/ reads and checks image files.
See docs/data.md. Imports only utils/, never models/."""
