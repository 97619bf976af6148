"""Issue 17, part 2: the explorer page (analysis ``explorer``), driven in headless Chromium through selenium.

Each browser test clicks, moves the slider or opens a feature and asserts what changed on the page, against numbers
computed here in Python (the model's own logits, the accuracy curve, the features' interactions), and checks that
the screenshots are not blank. Without Chromium and chromedriver (Debian's chromium, chromium-driver) or selenium
they skip, saying why; CI installs both (.ci/run).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from bilinear.analyses.explorer_page import render
from conftest import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def test_embedded_data_cannot_close_the_script_element():
    page = render(json.dumps({"token": "</script><script>alert(1)</script>"}))
    assert page.count("</script>") == 2  # the data element's and the code's own; the data's are escaped
    data = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)["token"] == "</script><script>alert(1)</script>"


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("headless Chromium is not installed: apt-get install -y chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -c constraints.txt -e '.[dev]'")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    profile = tempfile.mkdtemp(prefix="chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # as root, on a machine without network: no sandbox, and none of Chromium's own connections
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1400"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path: Path) -> dict:
    """Load the page from disk; return its embedded data. No errors may reach the console."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 20).until(lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "1")
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    return json.loads(driver.execute_script("return document.getElementById('data').textContent"))


def not_blank(png: bytes) -> "object":
    """The screenshot as an RGB image, after checking it shows something: many colours, not one flat page."""
    from PIL import Image, ImageStat

    img = Image.open(io.BytesIO(png)).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50, f"screenshot has {len(colours)} colours"
    assert max(ImageStat.Stat(img).stddev) > 10
    return img


def text(driver, id_: str) -> str:
    return driver.find_element("id", id_).text


def percent(s: str) -> float:
    """The first percentage in a text ("... 53.13% ..." -> 53.13)."""
    return float(re.search(r"([0-9.]+)%", s).group(1))


def bar_values(driver, id_: str) -> list[float]:
    return [float(r.get_attribute("data-value")) for r in driver.find_elements("css selector", f"#{id_} rect")]


def test_image_explorer_in_a_browser(tiny_mnist_run, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    from bilinear.checkpoint import load_config
    from bilinear.models import load_run_model
    from bilinear.tasks.image import load_data

    out = tmp_path / "an"
    run_cli("analyze", f"ckpt={tiny_mnist_run}", f"out={out}", "analyses=[explorer]")
    page = out / "explorer" / "index.html"
    assert page.is_file() and json.loads((out / "metrics.json").read_text())["explorer"]["kind"] == "image"
    html = page.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html  # nothing fetched

    D = open_page(browser, page)
    r, classes = D["d_hidden"], D["classes"]
    shot1 = not_blank(browser.get_screenshot_as_png())

    # clicking a class shows that class's eigenvectors
    first = lambda: browser.execute_script("return document.querySelector('#pos-vecs canvas').toDataURL()")  # noqa: E731
    captions = lambda: [e.text for e in browser.find_elements("css selector", "#pos-vecs .eig-caption")]  # noqa: E731
    before, caps_before = first(), captions()
    assert text(browser, "class-title").startswith(f"class {classes[0]}:")
    browser.find_element("id", "class-btn-3").click()
    assert text(browser, "class-title").startswith(f"class {classes[3]}:")
    want = [f"#{v['index'] + 1} " for v in D["class_data"][3]["positive"]]
    assert [c[: len(w)] for c, w in zip(captions(), want)] == want and captions() != caps_before
    assert first() != before
    assert "active" in browser.find_element("id", "class-btn-3").get_attribute("class")

    # the slider: one step right moves k, the accuracy and the chosen image's logits
    slider = browser.find_element("id", "k-slider")
    k0 = int(slider.get_attribute("value"))
    assert text(browser, "k-label").startswith(f"k = {k0} of {r}")
    sample = D["samples"][0]
    assert bar_values(browser, "logit-bars") == pytest.approx([sum(a[:k0]) for a in sample["acts"]], rel=1e-9, abs=1e-12)
    slider.send_keys(Keys.ARROW_RIGHT)
    assert text(browser, "k-label").startswith(f"k = {k0 + 1} of {r}")
    assert percent(text(browser, "k-acc")) == pytest.approx(100 * D["accuracy"][k0 + 1], abs=0.006)
    assert bar_values(browser, "logit-bars") == pytest.approx([sum(a[: k0 + 1]) for a in sample["acts"]], rel=1e-9, abs=1e-12)
    # at k = d every eigenpair is kept: the bars are the model's own logits for that test image (claim C1)
    slider.send_keys(Keys.END)
    assert text(browser, "k-label").startswith(f"k = {r} of {r}")
    cfg = load_config(tiny_mnist_run)
    x = load_data(cfg, torch.device("cpu")).test_x[sample["index"]]
    with torch.no_grad():
        logits = load_run_model(tiny_mnist_run, cfg, "cpu")(x[None])[0].double()
    shown = torch.tensor(bar_values(browser, "logit-bars"), dtype=torch.float64)
    assert (shown - logits).abs().max() <= 1e-4 * logits.abs().max()
    assert percent(text(browser, "k-acc")) == pytest.approx(100 * D["accuracy"][r], abs=0.006)

    # picking another test image changes the prediction shown and the E8 explanation
    title_before = text(browser, "explain-title")
    browser.find_element("id", "sample-btn-2").click()
    s2 = D["samples"][2]
    assert f"#{s2['index']}" in text(browser, "explain-title") and text(browser, "explain-title") != title_before
    assert f"test image #{s2['index']}" in text(browser, "k-pred")
    assert len(browser.find_elements("css selector", "#explain-panel .explained")) == len(s2["explained"])
    shot2 = not_blank(browser.get_screenshot_as_png())
    assert shot1.tobytes() != shot2.tobytes()


@pytest.fixture(scope="module")
def lm_with_saes(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    root = tmp_path_factory.mktemp("exdata")
    runs = tmp_path_factory.mktemp("exruns")
    lm = runs / "lm"
    run_cli("train", "task=stories", "scale=tiny", f"data_root={root}", f"hydra.run.dir={lm}", "train.progress=false")
    saes = []
    for site in ("mlp_in", "mlp_out"):
        saes.append(runs / site)
        run_cli("train", "task=sae", "scale=tiny", f"lm={lm}", f"data_root={root}", f"hydra.run.dir={saes[-1]}",
                "train.progress=false", "sae.layer=1", f"sae.site={site}")
    return lm, root, saes


def test_lm_explorer_in_a_browser(lm_with_saes, browser, tmp_path):
    from safetensors.torch import load_file

    from bilinear.checkpoint import load_config
    from bilinear.decompose import output_tensor, symmetrize
    from bilinear.models import load_run_model

    lm, root, (sae_in, sae_out) = lm_with_saes
    out = tmp_path / "an"
    run_cli("analyze", f"ckpt={lm}", f"saes=[{sae_in},{sae_out}]", f"data_root={root}", f"out={out}",
            "analyses=[negation,lowrank,explorer]", "interactions.n_sequences=16")
    m = json.loads((out / "metrics.json").read_text())["explorer"]
    assert m["negation"] and m["lowrank"] and m["exactness_rel_error"] < 1e-4
    D = open_page(browser, out / "explorer" / "index.html")
    feats = D["features"]

    # the page's interaction numbers are Q~_a = sym(D_in^T (e_a . B) D_in) of the materialised tensor
    model = load_run_model(lm, load_config(lm), "cpu")
    B = output_tensor(model.bilinear_form(1).to(dtype=torch.float64))  # (d, d, d): tiny here
    enc, dec = load_file(str(sae_out / "model.safetensors"))["W_enc"].double(), load_file(str(sae_in / "model.safetensors"))["W_dec"].double()
    f = next(x for x in feats[1:] if x["contexts"])  # not the page open at first, and active somewhere
    Qt = symmetrize(dec.T @ torch.einsum("o,oij->ij", enc[f["id"]], B) @ dec)
    idx = f["interaction"]["inputs"]
    want = 2 * Qt[idx][:, idx] - torch.diag(torch.diagonal(Qt[idx][:, idx]))
    assert torch.allclose(torch.tensor(f["interaction"]["matrix"], dtype=torch.float64), want, rtol=1e-3, atol=1e-6)

    # the first feature's page is open; opening another shows its contexts, neighbours and interactions
    assert text(browser, "feature-title") == f"output feature {feats[0]['id']}"
    shot1 = not_blank(browser.get_screenshot_as_png())
    browser.find_element("id", f"feat-btn-{f['id']}").click()
    assert text(browser, "feature-title") == f"output feature {f['id']}"
    assert browser.execute_script("return location.hash") == f"#feature-{f['id']}"
    contexts = browser.find_elements("css selector", "#contexts .context")
    assert len(contexts) == len(f["contexts"]) > 0
    assert len(browser.find_elements("css selector", "#contexts .tok.at")) == len(f["contexts"])  # the activating token
    rows = browser.find_elements("css selector", "#interaction-table tr")
    assert len(rows) == len(idx) + 1
    cells = rows[1].find_elements("css selector", "td")
    assert float(cells[1].get_attribute("title")) == pytest.approx(f["interaction"]["matrix"][0][0])
    assert str(f["neighbours"][0]["id"]) in text(browser, "neighbours")

    # the negation pair and the low-rank table come from those analyses; the pair's links open its features
    assert D["negation"]["pair"] == json.loads((out / "metrics.json").read_text())["negation"]["pair"]
    browser.find_element("css selector", "#negation-section a.feat").click()
    assert text(browser, "feature-title") == f"output feature {D['negation']['outputs'][0]['feature']}"
    assert browser.find_elements("css selector", "#lowrank-table td")
    shot2 = not_blank(browser.get_screenshot_as_png())
    assert shot1.tobytes() != shot2.tobytes()
