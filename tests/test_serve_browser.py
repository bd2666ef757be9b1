"""The kiosk page in a real browser: Debian's Chromium driven by Playwright, a fake webcam playing a Y4M file
made from a face photo, and the page served by a real `instantid-edge serve` on 127.0.0.1.

A screenshot of each state is kept under test-artifacts/kiosk/ (ignored by git; $INSTANTID_EDGE_ARTIFACTS moves
it). Under CI=true a missing browser fails the test instead of skipping it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving import get, provenance, running_server

CHROMIUM = Path("/usr/lib/chromium/chromium")
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
PROGRESS_RECORDER = """
window.__progress = [];
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("progress");
  new MutationObserver(() => window.__progress.push([bar.value, bar.max])).observe(bar, {attributes: true});
});
"""


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the browser test)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright_api():
    # without the serve extra (the torch-free runtime environment) there is no service to test
    pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install '.[serve]'")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the browser test needs playwright: pip install playwright (never `playwright install`)")
    if not CHROMIUM.exists():
        _unavailable(f"no Chromium at {CHROMIUM}: apt-get install -y --no-install-recommends chromium")
    with sync_playwright() as api:
        yield api


@pytest.fixture(scope="module")
def artifacts() -> Path:
    root = Path(os.environ.get("INSTANTID_EDGE_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
    folder = root / "kiosk"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


def write_y4m(photo: Path, out: Path, width: int = 640, height: int = 480, frames: int = 5) -> Path:
    """A Y4M video (4:2:0, BT.601 full range, as C420jpeg declares) showing the photo centred on grey."""
    face = Image.open(photo).convert("RGB")
    face.thumbnail((width, height))
    canvas = Image.new("RGB", (width, height), (128, 128, 128))
    canvas.paste(face, ((width - face.width) // 2, (height - face.height) // 2))
    rgb = np.asarray(canvas, np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b

    def plane(values, subsample):
        if subsample:
            values = values.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
        return np.clip(np.round(values), 0, 255).astype(np.uint8).tobytes()

    frame = b"FRAME\n" + plane(y, False) + plane(cb, True) + plane(cr, True)
    out.write_bytes(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode() + frame * frames)
    return out


def test_kiosk_page_from_consent_to_result_and_start_over(
    playwright_api, artifacts, runtime_package, face_pack, astronaut, assets, tmp_path
):
    video = write_y4m(astronaut, tmp_path / "webcam.y4m")
    browser = playwright_api.chromium.launch(
        executable_path=str(CHROMIUM), args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={video}"]
    )
    log = tmp_path / "server.log"
    try:
        with running_server(runtime_package, face_pack, log=log) as (url, _):
            context = browser.new_context(viewport={"width": 1000, "height": 1100}, permissions=["camera"])
            page = context.new_page()
            page.add_init_script(PROGRESS_RECORDER)
            errors = []  # script errors and content-security-policy violations; expected 4xx answers aside
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            jobs = []
            page.on("response", lambda r: jobs.append(r) if r.url.endswith("/v1/jobs") else None)
            shot = lambda name: page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)  # noqa: E731

            # 1. consent, from the keyboard: the button stays disabled until the box is ticked
            page.goto(f"{url}/?width=64&height=64&steps=12&seed=5")
            page.wait_for_function("() => document.getElementById('status').textContent === ''")  # ready
            assert page.locator("#consent-continue").is_disabled()
            shot("1-consent")
            page.focus("#consent-box")
            page.keyboard.press("Space")
            assert page.locator("#consent-continue").is_enabled()
            page.focus("#consent-continue")
            page.keyboard.press("Enter")

            # 2. the live preview plays the fake webcam (its track is labelled with the file's path)
            page.wait_for_function("() => document.getElementById('preview').videoWidth > 0")
            label = page.evaluate("() => document.getElementById('preview').srcObject.getVideoTracks()[0].label")
            assert "webcam.y4m" in label
            page.wait_for_selector("#style-list input[value=watercolor]")
            shot("2-camera")

            # 3. capture (keyboard again), choose a style
            page.focus("#capture")
            page.keyboard.press("Enter")
            page.wait_for_selector("#snapshot", state="visible")
            assert page.evaluate("() => document.getElementById('snapshot').width") == 640
            page.click("text=Watercolor")
            shot("3-captured")

            # 4. progress from the event stream
            page.click("#create")
            page.wait_for_function("() => document.getElementById('progress').value > 0", timeout=60_000)
            shot("4-progress")

            # 5. the result: shown, labelled, downloadable, and already forgotten by the server
            page.wait_for_selector("#step-result", state="visible", timeout=120_000)
            shot("5-result")
            assert page.locator("#ai-label").is_visible() and page.inner_text("#ai-label") == "AI-generated"
            assert page.evaluate("() => document.getElementById('result').naturalWidth") == 64
            with page.expect_download() as download:
                page.click("#download")
            saved = Path(download.value.path())
            record = provenance(saved.read_bytes())
            assert record["size"] == (64, 64) and record["style"] == "watercolor" and record["seed"] == 5
            assert page.get_attribute("#download", "href") == page.get_attribute("#result", "src")  # the file shown
            assert np.asarray(Image.open(io.BytesIO(saved.read_bytes()))).std() > 0
            progress = page.evaluate("() => window.__progress")
            values = [value for value, maximum in progress if maximum == 12]
            assert values == sorted(values) and values[-1] == 12 and len(set(values)) > 3, progress
            job_id = json.loads(jobs[0].body())["id"]
            assert get(f"{url}/v1/jobs/{job_id}")[0] == 404  # downloaded, then deleted by the page

            # 6. start over forgets everything on the page
            blob_url = page.get_attribute("#download", "href")
            page.click("#step-result .start-over")
            page.wait_for_selector("#step-consent", state="visible")
            shot("6-start-over")
            assert not page.is_checked("#consent-box") and page.locator("#consent-continue").is_disabled()
            assert page.get_attribute("#result", "src") is None and page.get_attribute("#download", "href") is None
            assert page.evaluate("() => document.getElementById('snapshot').width") == 0
            assert page.evaluate("() => document.getElementById('preview').srcObject") is None  # camera released
            revoked = page.evaluate(
                """(url) => new Promise((done) => {
                    const probe = new Image();
                    probe.onload = () => done(false);
                    probe.onerror = () => done(true);
                    probe.src = url;
                })""",
                blob_url,
            )
            assert revoked, "the portrait's blob URL still resolves after start over"

            # 7. the file-upload fallback, and an error the page shows (a photo without a face)
            page.check("#consent-box")
            page.click("#consent-continue")
            blank = tmp_path / "wall.png"
            Image.new("RGB", (320, 320), (120, 130, 140)).save(blank)
            page.set_input_files("#upload", str(blank))
            page.click("#create")
            page.wait_for_selector("#step-error", state="visible", timeout=60_000)
            assert "no face found" in page.inner_text("#error-message")
            shot("7-error")
            page.click("#try-again")
            page.set_input_files("#upload", str(assets / "faces" / "grace_hopper.jpg"))
            page.click("#create")
            page.wait_for_selector("#step-result", state="visible", timeout=120_000)
            assert page.evaluate("() => document.getElementById('result').naturalWidth") == 64
            shot("8-uploaded-result")
            expected = ("status of 422", "ERR_FILE_NOT_FOUND")  # the faceless photo; the revoked-URL probe
            assert [e for e in errors if not any(text in e for text in expected)] == []
            context.close()
    finally:
        browser.close()
