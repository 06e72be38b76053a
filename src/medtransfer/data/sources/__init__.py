"""Data sources, one per conf/data/ option: folder, csv (manifest), medmnist; image_files is the base of
the two that read files."""
