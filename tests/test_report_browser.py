"""report.html and index.html in a real browser: headless Chromium (Debian's package, installed by
`make test`) in a network namespace of its own, driven through the DevTools protocol (tests/browser.py).
Each page opens from disk with no console error and no request that would leave the machine;
moving a slice slider, switching the method and the scan change the rendered pixels; the cohort
table sorts and links to the case pages. The pages' data are checked against the NIfTI outputs."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest

from tests.browser import Browser
from tests.builders import run_cli, write_case


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


@pytest.fixture(scope="module")
def cohort(seg_onnx, tmp_path_factory):
    """Three cases through `nxrt evaluate` (a failing one among them), with reports."""
    root = tmp_path_factory.mktemp("cohort")
    for name in ("c1", "c2", "c3"):
        write_case(root / name, name)
    (root / "broken").mkdir()
    (root / "broken" / "broken_flair.nii.gz").write_bytes(b"not a nifti")
    out = root / "out"
    res = run_cli("explain", seg_onnx, root / "c1", root / "c2", root / "broken", root / "c3", "-m", "vanilla",
                  "-m", "gradcam", "--metric", "pointing_game", "-o", out)
    assert res.returncode == 1, res.stderr  # the broken case only
    return out


def _canvas(page, view: str) -> np.ndarray:
    """The pixels the page drew in one view."""
    flat = page.evaluate(f"Array.from(document.getElementById('canvas-{view}').getContext('2d')"
                         f".getImageData(0, 0, 320, 320).data)")
    return np.asarray(flat, np.uint8).reshape(320, 320, 4)[..., :3].astype(int)


def test_case_page_opens_offline_and_reacts_to_its_controls(browser, cohort, tmp_path):
    page = browser.page((cohort / "c1" / "report.html").as_uri())
    page.wait_for("document.body.dataset.ready === 'true'")
    assert page.errors() == []
    first = page.screenshot(tmp_path / "first.png")
    axial = _canvas(page, "axial")
    page.evaluate("(() => { const s = document.getElementById('slider-axial');"
                  " s.value = Number(s.value) + 3; s.dispatchEvent(new Event('input')); })()")
    moved = page.screenshot()
    assert np.abs(moved - first).sum() > 0 and np.abs(_canvas(page, "axial") - axial).sum() > 0
    caption = page.evaluate("document.getElementById('caption-axial').textContent")
    assert re.fullmatch(r"axial: slice \d+ of \d+, z = [+-]\d+\.\d mm", caption)
    before = _canvas(page, "coronal")
    page.evaluate("document.querySelector('input[name=method][value=gradcam]').click()")
    switched = page.screenshot()
    assert np.abs(switched - moved).sum() > 0 and np.abs(_canvas(page, "coronal") - before).sum() > 0
    page.evaluate("document.querySelector('input[name=method][value=none]').click()")
    bare = _canvas(page, "coronal")
    page.evaluate("document.querySelector('input[name=modality][value=t1]').click()")
    assert np.abs(_canvas(page, "coronal") - bare).sum() > 0  # another scan underneath
    assert page.errors() == []
    assert page.network_requests() == [] and page.failed() == []
    assert all(u.startswith("file:") for u in page.requests())  # the page itself, nothing else


def test_the_browser_sees_a_request_that_tries_to_leave(browser, tmp_path):
    """The check above can fail: a page with one remote image is seen asking for it, and the
    request fails (the browser's namespace has no network)."""
    leaky = tmp_path / "leaky.html"
    leaky.write_text("<!DOCTYPE html><html><body><img src='http://192.0.2.1/x.png'></body></html>")
    page = browser.page(leaky.as_uri())
    page.wait_for("document.images[0].complete")
    assert page.network_requests() == ["http://192.0.2.1/x.png"] and page.failed()
    assert page.errors()  # the failed load is logged as an error


def test_case_page_data_are_the_written_maps(cohort):
    """What the page carries is what the NIfTI files hold: the display map on the case's grid, in
    RAS order and cropped to the brain, at 1/255 steps above the floor it is shown from; the outline
    bits are the true tumour."""
    from nxrt.report import volumes

    text = (cohort / "c1" / "report.html").read_text()
    data = json.loads(re.search(r'<script id="nxrt-data" type="application/json">(.*?)</script>', text,
                                re.S).group(1).replace("<\\/", "</"))
    shown = volumes.unpacked(data["maps"]["vanilla"], data["shape"]) / 255.0
    img = nib.load(str(cohort / "c1" / "vanilla_map.nii.gz"))
    full = np.asarray(img.dataobj, np.float64)
    # page voxel -> file voxel through the page's own toFile matrix
    to_file = np.asarray(data["toFile"])
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in data["shape"]], indexing="ij"), -1).reshape(-1, 3)
    file_ijk = np.rint(ijk @ to_file[:3, :3].T + to_file[:3, 3]).astype(int)
    want = full[tuple(file_ijk.T)].reshape(data["shape"])
    want[want <= data["floor"]] = 0  # not shown, so not carried
    np.testing.assert_allclose(shown, want, atol=0.5 / 255 + 1e-6)
    assert (want > data["floor"]).sum() > 100
    world = ijk @ np.asarray(data["affine"])[:3, :3].T + np.asarray(data["affine"])[:3, 3]
    np.testing.assert_allclose(world, file_ijk @ img.affine[:3, :3].T + img.affine[:3, 3], atol=1e-4)
    seg = np.asarray(nib.load(str(next((cohort.parent / "c1").glob("*_seg.nii.gz")))).dataobj) > 0
    bits = volumes.unpacked(data["outline"], data["shape"], delta=False)
    np.testing.assert_array_equal(bits & 1, seg[tuple(file_ijk.T)].reshape(data["shape"]))
    assert seg.sum() == (bits & 1).sum()  # the crop keeps the whole tumour


def test_cohort_page_sorts_and_links_to_each_case(browser, cohort):
    page = browser.page((cohort / "index.html").as_uri())
    page.wait_for("document.body.dataset.ready === 'true'")
    page.wait_for("Array.from(document.images).every(i => i.complete)")
    assert page.errors() == [] and page.network_requests() == []
    names = "Array.from(document.querySelectorAll('#cases tbody tr')).map(r => r.cells[0].textContent)"
    assert page.evaluate(names) == ["c1", "c2", "broken", "c3"]
    assert page.evaluate("Array.from(document.images).map(i => i.naturalWidth > 0)") == [True] * 3
    links = page.evaluate("Array.from(document.querySelectorAll('#cases a')).map(a => a.href)")
    assert links == [(cohort / c / "report.html").as_uri() for c in ("c1", "c2", "c3")]
    assert "failed" in page.evaluate("document.querySelector('#cases tbody tr:nth-child(3)').className")
    page.evaluate("document.querySelector('#cases th[data-column=\"0\"]').click()")
    assert page.evaluate(names) == ["broken", "c1", "c2", "c3"]
    page.evaluate("document.querySelector('#cases th[data-column=\"0\"]').click()")
    assert page.evaluate(names) == ["c3", "c2", "c1", "broken"]
    # a numeric column sorts by value: vanilla's share in the true tumour, as summary.json has it
    shares = {c: json.loads((cohort / c / "summary.json").read_text())["methods"]["vanilla"]["share_in_true_tumour"]
              for c in ("c1", "c2", "c3")}
    column = page.evaluate("Array.from(document.querySelectorAll('#cases th')).findIndex("
                           "t => t.textContent === 'vanilla: share in true tumour')")
    page.evaluate(f"document.querySelector('#cases th[data-column=\"{column}\"]').click()")
    assert page.evaluate(names)[:3] == sorted(shares, key=shares.get)
    assert page.evaluate("document.querySelector('#metrics') !== null")  # the metric summary by method
    assert page.errors() == []


def test_a_classifier_case_page_and_the_radiological_switch(browser, tmp_path):
    """The demo grader (a 3D classifier: no predicted tumour) on the demo case: the page says the
    prediction by label name, offers no predicted-tumour outline, and the radiological convention
    mirrors the axial view left-right (its letters swapped)."""
    from importlib import resources

    data = resources.files("nxrt.demo") / "data"
    res = run_cli("explain", data / "grader.onnx", data / "case", "-m", "vanilla", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    page = browser.page((tmp_path / "out" / "BraTS-PHANTOM-007" / "report.html").as_uri())
    page.wait_for("document.body.dataset.ready === 'true'")
    assert "prediction: HGG" in page.evaluate("document.querySelector('header').textContent")
    assert page.evaluate("document.getElementById('show-predicted') === null")
    assert page.evaluate("document.getElementById('show-truth') !== null")
    neurological = _canvas(page, "axial")
    page.evaluate("(() => { const c = document.getElementById('convention'); c.value = 'radiological';"
                  " c.dispatchEvent(new Event('change')); })()")
    radiological = _canvas(page, "axial")
    rows, cols = slice(24, 296), slice(24, 296)  # (the letters sit in the outer 24 px)
    # the mirror image, give or take the one-pixel rounding of scaling a picture onto the canvas
    off = min(np.abs(radiological[rows, cols] - neurological[:, ::-1][rows, 24 + s:296 + s]).mean() for s in (-1, 0, 1))
    assert off < 1.0 < np.abs(radiological[rows, cols] - neurological[rows, cols]).mean()
    assert page.errors() == [] and page.network_requests() == []
