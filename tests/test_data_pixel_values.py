"""Pixel values as the modality means them: EXIF orientation applied, signed and 16-bit intensities kept
(a window in the file's units for any >8-bit image, negatives never clipped), a warning for images with a
handful of grey levels, DICOM through pydicom's LUT functions, missing decoder plugins named as such, and a
pixel limit for DICOM."""

from __future__ import annotations

import logging
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import write_dicom
from medtransfer.data.files import decode as decode_module
from medtransfer.data.files.decode import decode, read_image, resolve_window
from medtransfer.data.files.inspection import inspect_file
from medtransfer.data.sources.folder import FolderDataModule
from medtransfer.utils.errors import ConfigError

STORED_DICOM = np.array([[0, 450, 550, 1000]] * 2, dtype=np.uint16)


def write_int16_tiff(path, array: np.ndarray) -> None:
    """A minimal TIFF of signed 16-bit pixels (SampleFormat 2), as CT exports in HU write them; Pillow
    cannot write this mode, so the bytes are put together here."""
    data = np.ascontiguousarray(array.astype("<i2")).tobytes()
    h, w = array.shape
    tags = [(256, 4, w), (257, 4, h), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, 0)]
    tags += [(277, 3, 1), (278, 4, h), (279, 4, len(data)), (339, 3, 2)]
    offset = 8 + 2 + 12 * len(tags) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)))
    for tag, kind, value in tags:
        value = offset if tag == 273 else value
        out += (
            struct.pack("<HHIHH", tag, kind, 1, value, 0)
            if kind == 3
            else struct.pack("<HHII", tag, kind, 1, value)
        )
    path.write_bytes(bytes(out + struct.pack("<I", 0) + data))


def test_exif_orientation_is_applied_as_viewers_show_the_photo(tmp_path):
    upright = np.zeros((16, 32, 3), np.uint8)
    upright[:, :8] = 255  # a bright band on the left of a landscape photo
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # the sensor's orientation
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display", as a phone held upright writes it
    stored.save(tmp_path / "phone.jpg", quality=95, exif=exif.tobytes())
    image = read_image(tmp_path / "phone.jpg", 3)
    assert image.shape == (3, 16, 32)  # displayed landscape, not stored portrait
    assert image[:, :, :8].float().mean() > 200 and image[:, :, 8:].float().mean() < 40
    facts = inspect_file(str(tmp_path / "phone.jpg"))
    assert (facts.height, facts.width) == (16, 32)


def test_signed_16_bit_tiff_keeps_its_negatives_and_takes_a_window(tmp_path):
    hu = np.array([[-1000, 0, 40, 1000]], dtype=np.int16)
    write_int16_tiff(tmp_path / "ct.tif", hu)
    array, mode = decode(tmp_path / "ct.tif")
    assert mode == "I"  # Pillow reads signed 16-bit TIFF as 32-bit integers
    # over the storage's range −32768..32767: −1000 → 123.6, nothing clipped to 0
    assert array[0].tolist() == [124, 128, 128, 131]
    # a window in HU: −1000 → 0, 0 → 127.5, 40 → 132.6, 1000 → 255
    assert read_image(tmp_path / "ct.tif", 1, window=[0, 2000])[0, 0].tolist() == [0, 128, 133, 255]


def test_16_bit_png_takes_a_window_in_its_units(tmp_path):
    stored = np.array([[24, 1024, 1064, 1104, 2024]], dtype=np.uint16)  # HU + 1024: −1000, 0, 40, 80, 1000
    Image.fromarray(stored).save(tmp_path / "ct.png")
    assert read_image(tmp_path / "ct.png", 1, window=[1064, 80])[0, 0].tolist() == [0, 0, 128, 255, 255]


def test_few_grey_levels_warn_with_the_fix_and_a_window_removes_it(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for cls, level in (("normal", 35), ("bleed", 75)):
        (tmp_path / "ct" / cls).mkdir(parents=True)
        for i in range(6):
            hu = np.full((16, 16), -1000, np.int16)
            hu[4:12, 4:12] = level + rng.integers(-3, 4, (8, 8))
            write_int16_tiff(tmp_path / "ct" / cls / f"s{i}.tif", hu)
    with caplog.at_level(logging.WARNING):
        FolderDataModule(root=str(tmp_path / "ct"), cache="none").setup()
    (message,) = [r.getMessage() for r in caplog.records if "grey levels" in r.getMessage()]
    assert message.startswith("12 of 12 image file(s) use fewer than 8 grey levels")
    assert "values span -1000..78" in message and "data.window=[" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        datamodule = FolderDataModule(root=str(tmp_path / "ct"), cache="none", window=[40, 80])
        datamodule.setup()
    assert not [r for r in caplog.records if "grey levels" in r.getMessage()]
    assert datamodule.decode_options() == {"window": [40.0, 80.0]}


def test_window_keys_are_checked_and_dicom_window_is_its_former_name(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_window(None, [40, 400]) == [40.0, 400.0]
    assert "data.dicom_window is now called data.window" in caplog.text
    assert resolve_window([40, 400], [40, 400]) == [40.0, 400.0]
    with pytest.raises(ConfigError, match=r"data.window=\[40, 400\] and data.dicom_window=\[0, 80\] differ"):
        resolve_window([40, 400], [0, 80])
    with pytest.raises(ConfigError, match=r"data.window=\[40\]: give \[centre, width\]"):
        resolve_window([40])
    with pytest.raises(ConfigError, match="the width must be > 0"):
        resolve_window([40, 0])


def test_dicom_voi_lut_sequence_and_function_are_honoured(tmp_path):
    from pydicom.dataset import Dataset

    path = write_dicom(tmp_path / "lut.dcm", np.array([[0, 1, 2, 3]], dtype=np.uint16))
    import pydicom

    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]  # 4 entries, first input value 0, 16-bit output
    item.add_new(0x00283006, "US", [0, 3000, 1000, 4000])  # LUT Data; not monotonic: only a LUT does this
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    assert decode(path)[0][0].tolist() == [0, 191, 64, 255]  # over the LUT's values 0..4000

    sigmoid = write_dicom(tmp_path / "s.dcm", STORED_DICOM, window=(500, 200))
    ds = pydicom.dcmread(sigmoid)
    ds.VOILUTFunction = "SIGMOID"
    ds.save_as(sigmoid)
    # stored 0, 450, 550, 1000 through 1 / (1 + exp(−4 (x − 500) / 200)) over 0..65535
    assert decode(sigmoid)[0][0].tolist() == [0, 69, 186, 255]


def test_compressed_dicom_without_its_decoder_is_named_with_the_install(tmp_path):
    from pydicom.data import get_testdata_file
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    source = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")  # pydicom's own test file
    facts = inspect_file(source)
    if get_decoder(JPEGLSLossless).is_available:  # a JPEG-LS plugin is installed here: it decodes
        assert facts.ok
        return
    assert facts.reason.startswith("needs a decoder plugin: its pixel data is compressed as JPEG-LS Lossless")
    assert "1.2.840.10008.1.2.4.80" in facts.reason and "corrupt" not in facts.reason
    assert "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg" in facts.fix
    assert '".[dicom]"' in facts.fix


def test_dicom_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "big.dcm", STORED_DICOM)  # 2 × 4 pixels
    monkeypatch.setattr(decode_module, "MAX_DICOM_PIXELS", 7)
    facts = inspect_file(str(path))
    assert facts.reason.startswith(
        "too large: declares 2 × 4 pixels × 1 frame(s) = 8 pixels, more than the limit of 7"
    )
