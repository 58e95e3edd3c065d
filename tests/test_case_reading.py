"""Reading a case fast, checked against plain references: the z-score statistics gathered while
the files are read (`Case.moments`) against numpy in float64 for every voxel type a NIfTI file may
hold, the normalised input they give, and the multi-member gzip reader against Python's gzip."""

import nibabel as nib
import numpy as np
import pytest

from nxrt.errors import InputError
from nxrt.imaging.cases import load_case
from nxrt.imaging.preprocess import Moments, prepare

SHAPE = (37, 29, 23)  # odd sizes: several partial blocks when the block is small


def _volume(dtype, rng):
    brain = rng.uniform(size=SHAPE) < 0.6
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = rng.integers(max(info.min, -30000), min(info.max, 30000), SHAPE, endpoint=True)
    else:
        values = rng.normal(300, 80, SHAPE)
    return np.where(brain, values, 0).astype(dtype)


def _oracle(values: np.ndarray) -> tuple[int, float, float]:
    v = values.astype(np.float32).astype(np.float64)  # what the model's input is made of
    return int(np.count_nonzero(v)), float(v.sum()), float((v * v).sum())


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("block", [1 << 10, 1 << 16])
def test_moments_equal_float64_sums(dtype, block):
    vol = _volume(dtype, np.random.default_rng(1))
    source = vol if (np.issubdtype(dtype, np.integer) and np.dtype(dtype).itemsize <= 2) or dtype == np.float32 \
        else vol.astype(np.float32)
    m = Moments.of(np.asfortranarray(source), block=block)
    count, total, squares = _oracle(vol)
    assert m.count == count
    assert m.total == pytest.approx(total, rel=1e-12, abs=1e-9)
    assert m.squares == pytest.approx(squares, rel=1e-12)
    assert m.finite


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("four_d", [False, True])
def test_case_moments_and_zscore_match_numpy(tmp_path, dtype, four_d):
    rng = np.random.default_rng(2)
    vols = [_volume(dtype, rng) for _ in range(4)]
    names = ("flair", "t1", "t1ce", "t2")
    if four_d:
        nib.save(nib.Nifti1Image(np.stack(vols, axis=-1), np.eye(4)), str(tmp_path / "case.nii.gz"))
        case = load_case(tmp_path / "case.nii.gz", channels=names)
    else:
        for v, n in zip(vols, names, strict=True):
            nib.save(nib.Nifti1Image(v, np.eye(4)), str(tmp_path / f"c_{n}.nii.gz"))
        case = load_case(tmp_path, channels=names)
    assert case.moments is not None and len(case.moments) == 4
    for m, v in zip(case.moments, vols, strict=True):
        count, total, squares = _oracle(v)
        assert (m.count, m.total, m.squares) == (count, pytest.approx(total, rel=1e-12, abs=1e-9),
                                                 pytest.approx(squares, rel=1e-12))
    model = (32, 24, 28)  # crop on two axes, pad on one
    x, geometry = prepare(case.data, model, "channels_first", "zscore", case.moments)
    x_again, _ = prepare(case.data, model, "channels_first", "zscore")  # statistics recomputed here
    np.testing.assert_array_equal(x, x_again)
    for c, v in enumerate(vols):
        f = v.astype(np.float32).astype(np.float64)
        brain = f[f != 0]
        want = np.where(f != 0, (f - brain.mean()) / brain.std(), 0)
        np.testing.assert_allclose(geometry.to_image(x[0, c]), _cropped(want, geometry), rtol=2e-5, atol=2e-5)
        assert not np.signbit(x[0, c][x[0, c] == 0]).any()  # background is +0, not -0


def _cropped(image_values, geometry):
    """The image-grid values the model sees, mapped back (zero where the crop cut them off)."""
    return geometry.to_image(geometry.to_model(image_values))


def test_nan_in_a_float_channel_is_one_clear_error(tmp_path):
    vol = _volume(np.float32, np.random.default_rng(3))
    vol[3, 4, 5] = np.nan
    vol[6, 7, 8] = np.inf
    for n in ("flair", "t1", "t1ce", "t2"):
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / f"c_{n}.nii.gz"))
    with pytest.raises(InputError, match=r"c_flair\.nii\.gz: 2 NaN/Inf voxel"):
        load_case(tmp_path)


def test_gunzip_reads_every_member_like_pythons_gzip():
    import gzip

    from nxrt.imaging.writer import gunzip, gzip_members

    rng = np.random.default_rng(4)
    payload = rng.integers(0, 50, 10_000_000).astype(np.uint8).tobytes()
    single = gzip.compress(payload)
    multi = gzip_members(payload)  # nxrt's own parallel members (4 MB each)
    assert multi.count(b"\x1f\x8b\x08") >= 3 and gzip.decompress(multi) == payload
    mixed = gzip.compress(b"head") + multi + b"\0" * 16  # trailing zero padding, as gzip allows
    assert gunzip(single) == payload and gunzip(multi) == payload
    assert gunzip(mixed) == gzip.decompress(gzip.compress(b"head") + multi) == b"head" + payload
    with pytest.raises(EOFError):
        gunzip(single[:-100])
    with pytest.raises(OSError, match="trailing garbage"):
        gunzip(single + b"junk")


def test_statistics_that_overflow_are_an_error_not_a_silent_scale():
    data = np.ones((4, 4, 4, 1), np.float64)
    data[0, 0, 0, 0] = 1e200  # its square is inf in float64
    with pytest.raises(InputError, match="NaN/Inf"):
        prepare(data, (4, 4, 4), "channels_first", "zscore")
