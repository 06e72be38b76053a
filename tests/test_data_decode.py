"""Decoding: 16-bit images scaled over their full range, colour modes, DICOM (rescale, window, MONOCHROME1),
and the channel count the data hands to the model."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_folder_tree, write_dicom
from medtransfer.data.files.decode import decode, is_image_file, read_image
from medtransfer.data.files.inspection import inspect_file
from medtransfer.train import build_data, build_model
from medtransfer.utils.errors import DataError

# stored values → rescaled (×2 − 1000): −1000, −100, 100, 1000 (Hounsfield-like units)
STORED = np.array([[0, 450, 550, 1000]] * 2, dtype=np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grayscale_is_scaled_over_its_full_range(tmp_path, suffix):
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / f"x{suffix}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    image = read_image(path, channels=1)
    assert image.dtype == torch.uint8 and image.shape == (1, 1, 4)
    assert image[0, 0].tolist() == [0, 4, 128, 255]  # v · 255 / 65535, rounded; nothing clipped at 255


def test_colour_modes_decode_to_rgb_or_luminance(tmp_path):
    colour = (10, 200, 30)
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = colour
    Image.fromarray(rgb).save(tmp_path / "rgb.bmp")
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (*colour, 0)  # fully transparent: the colour is still the pixel's value
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0, *colour] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.save(tmp_path / "palette.png")
    for name in ("rgb.bmp", "rgba.png", "palette.png"):
        assert read_image(tmp_path / name, channels=3)[:, 0, 0].tolist() == list(colour), name
        # 0.299 R + 0.587 G + 0.114 B = 123.81
        assert read_image(tmp_path / name, channels=1)[0, 0, 0].item() == 124, name


def test_grayscale_gives_one_channel_or_three_identical(tmp_path):
    Image.fromarray(np.array([[7, 250]], dtype=np.uint8)).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png", 1).tolist() == [[[7, 250]]]
    assert read_image(tmp_path / "g.png", 3).tolist() == [[[7, 250]]] * 3


def test_dicom_rescale_and_the_files_window(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", STORED, slope=2, intercept=-1000, window=(0, 400))
    array, mode = decode(path)
    assert mode == "DICOM MONOCHROME2" and array.dtype == np.uint8
    # the file's window through pydicom's apply_voi_lut, the standard's LINEAR function
    # ((x − (c − 0.5)) / (w − 1) + 0.5): −1000 → 0, −100 → 63.9, 100 → 191.7, 1000 → 255
    assert array[0].tolist() == [0, 64, 192, 255]


def test_dicom_window_from_config_wins_over_the_files(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", STORED, slope=2, intercept=-1000, window=(0, 400))
    # window 0 ± 1000: −1000 → 0, −100 → 114.75, 100 → 140.25, 1000 → 255
    assert read_image(path, 1, window=[0, 2000])[0, 0].tolist() == [0, 115, 140, 255]


def test_dicom_monochrome1_is_inverted(tmp_path):
    path = write_dicom(
        tmp_path / "xray.dcm", STORED, photometric="MONOCHROME1", slope=2, intercept=-1000, window=(0, 400)
    )
    assert decode(path)[0][0].tolist() == [255, 191, 63, 0]  # 255 − [0, 64, 192, 255]


def test_dicom_without_window_or_rescale_spans_min_to_max(tmp_path):
    path = write_dicom(tmp_path / "scan", STORED)  # no extension: recognised by its DICM marker
    assert is_image_file(path)
    assert read_image(path, 1)[0, 0].tolist() == [0, 115, 140, 255]


def test_pydicoms_own_sample_ct_decodes():
    from pydicom.data import get_testdata_file

    array, mode = decode(get_testdata_file("CT_small.dcm"))
    assert mode == "DICOM MONOCHROME2" and array.shape == (128, 128)
    assert (array.min(), array.max()) == (0, 255)


def test_missing_pydicom_names_the_extra(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "ct.dcm", STORED)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(DataError, match=r"pip install 'medtransfer\[dicom\]'"):
        read_image(path, 1)


def test_grayscale_data_set_gives_a_one_channel_model(tmp_path, train_config):
    root = make_folder_tree(tmp_path / "gray", per_class=4, size=16)
    # colour files whose channels are equal count as gray; so do 16-bit and DICOM files
    Image.fromarray(np.full((16, 16), 90, np.uint8)).convert("RGB").save(root / "benign" / "rgb_gray.jpg")
    Image.fromarray(np.full((16, 16), 3000, np.uint16)).save(root / "malignant" / "deep.png")
    write_dicom(root / "malignant" / "scan.dcm", STORED)
    cfg = train_config(data=["data=folder", f"data.root={root}"])
    datamodule = build_data(cfg)
    assert datamodule.num_channels == 1
    assert datamodule.summary()["channel_modes"] == {"DICOM MONOCHROME2": 1, "I;16": 1, "L": 8, "RGB": 1}
    model = build_model(cfg, datamodule)
    assert model.backbone.conv1.in_channels == 1
    x, _ = next(iter(datamodule.train_dataloader()))
    assert x.shape[1:] == (1, 16, 16)
    assert model(x).shape == (len(x), 2)


def test_colour_data_set_gives_three_channels(tmp_path, train_config):
    root = make_folder_tree(tmp_path / "colour", per_class=4, size=16, channels=3)
    datamodule = build_data(train_config(data=["data=folder", f"data.root={root}"]))
    assert datamodule.num_channels == 3
    assert next(iter(datamodule.train_dataloader()))[0].shape[1:] == (3, 16, 16)


def test_dicom_without_a_single_image_is_unsupported(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    path = write_dicom(tmp_path / "series.dcm", STORED)  # 2 rows of 4 pixels ...
    ds = pydicom.dcmread(path)
    ds.Rows, ds.NumberOfFrames = 1, 2  # ... read as 2 frames of 1 row
    ds.save_as(path)
    assert (
        inspect_file(str(path)).reason
        == "unsupported: multi-frame DICOM (2 frames): medtransfer reads single images"
    )
    plan = inspect_file(get_testdata_file("rtplan.dcm"))
    assert plan.reason == "unsupported: no pixel data (a DICOM RTPLAN object, not an image)"
