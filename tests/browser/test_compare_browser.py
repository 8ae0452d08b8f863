"""The interactive comparison as a user meets it: JupyterLab on a finished quick study, the compare notebook
opened in headless Chromium (Debian's package, driven by Playwright; nothing downloaded), Run All, another
pair picked in the dropdowns, one click on "Run Interact": the attention maps, CKA, probes and retrieval deltas
of the chosen pair must render on that first click, with no warning or error boxes, exactly as a second click
of the same pair renders them, and nothing may land in JupyterLab's log console (a figure drawn with pyplot in
the callback leaks a copy there: the first-click bug this test guards against).

Run with `make browser-test` (the `browser` marker keeps it out of `make test`). It needs `/usr/bin/chromium`
(`apt-get install chromium`; CHROMIUM overrides the path) and Playwright's Python package. A screenshot lands
in tests/browser/artifacts/compare.png. COCOA_BROWSER_STUDY reuses a finished quick study folder.
"""

from __future__ import annotations

import base64
import io
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory) -> Path:
    """A finished quick study (experiments/quick.yaml): trained, scored and captured; no notebooks run."""
    given = os.environ.get("COCOA_BROWSER_STUDY")
    if given and (Path(given) / "study.json").is_file():
        return Path(given)
    root = tmp_path_factory.mktemp("study")
    config = yaml.safe_load((REPO / "experiments" / "quick.yaml").read_text())
    config.update(out_dir=str(root / "quick"), report_dir=str(root / "quick" / "report"), notebooks=[])
    (root / "quick.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    subprocess.run([str(VENV_BIN / "cocoa-lens"), "study", "--config", str(root / "quick.yaml")], cwd=REPO, env=env,
                   check=True, timeout=600, stdout=subprocess.DEVNULL)
    return root / "quick"


@pytest.fixture(scope="module")
def lab(quick_study, tmp_path_factory):
    """JupyterLab serving the compare notebook, parameterised for the quick study with `interactive = True`."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    folder = tmp_path_factory.mktemp("lab")
    book = load_notebook_node(str(REPO / "notebooks" / "compare_checkpoints.ipynb"))
    book = parameterize_notebook(book, {"study_dir": str(quick_study), "interactive": True, "attribute": "shape"})
    nbformat.write(book, folder / "compare.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(folder / ".runtime"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    log = open(folder / "lab.log", "w")
    server = subprocess.Popen([str(VENV_BIN / "jupyter"), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                               f"--IdentityProvider.token={token}", f"--notebook-dir={folder}", "--allow-root",
                               f"--LabApp.workspaces_dir={folder / '.workspaces'}", "--LabApp.news_url=",
                               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (folder / "lab.log").read_text()
                time.sleep(0.5)
        yield f"{url}/lab/tree/compare.ipynb?token={token}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _images(locator) -> list:
    """The grey pixels ([height, width] float array) of every PNG shown under `locator`."""
    import numpy as np
    from PIL import Image

    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("L"), dtype=float)
            for src in locator.locator("img").evaluate_all("imgs => imgs.map(i => i.src)")]


def _shapes(images) -> list[tuple[int, int, float]]:
    """(width, height, pixel spread) of each image, for messages."""
    return [(p.shape[1], p.shape[0], round(float(p.std()), 1)) for p in images]


def _log_console(page) -> tuple[int, int, str]:
    """Open JupyterLab's log console (View > Show Log Console): how many entries and images it holds, and its text.
    Output a widget callback sends outside its `Output` (a pyplot figure flushed by the inline backend) lands there."""
    page.keyboard.press("Escape")
    page.locator("li.lm-MenuBar-item", has_text="View").click()
    page.locator("li.lm-Menu-item[data-command='logconsole:open']").click()
    panel = page.locator(".jp-LogConsolePanel")
    panel.wait_for(timeout=10_000)
    page.wait_for_timeout(500)
    return panel.locator(".jp-OutputArea-child").count(), panel.locator("img").count(), panel.inner_text()


def test_compare_widgets_render_the_chosen_pair_on_the_first_click(lab):
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set CHROMIUM)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 2400})
        try:
            page.goto(lab)
            page.locator(".jp-Notebook .jp-Cell").nth(5).wait_for(timeout=60_000)
            expect(page.get_by_text(re.compile(r"\| Idle"))).to_be_visible(timeout=90_000)  # the kernel is up
            page.locator("li.lm-MenuBar-item", has_text="Run").click()
            page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()
            button = page.locator("button.widget-button", has_text="Run Interact")
            button.wait_for(timeout=120_000)
            a = page.locator(".widget-dropdown", has=page.locator("label", has_text="checkpoint A")).locator("select")
            b = page.locator(".widget-dropdown", has=page.locator("label", has_text="checkpoint B")).locator("select")
            # the widgets start at the configured pair (quick.yaml: compare: [contrastive-causal, bridged-l1])
            assert (a.input_value(), b.input_value()) == ("contrastive-causal-s0", "bridged-l1-s0")
            a.select_option("bridged-l1-s0")
            b.select_option("contrastive-causal-s0")
            page.locator(".widget-dropdown", has=page.locator("label", has_text="mask type")).locator(
                "select").select_option("eos_bridged")
            button.click()  # the first click after the kernel started
            output = page.locator(".widget-output")
            expect(output.locator(".jp-RenderedMarkdown", has_text="Retrieval deltas")).to_be_visible(timeout=120_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)
            text = output.inner_text()
            assert "Retrieval deltas (contrastive-causal-s0 − bridged-l1-s0)" in text, text
            assert "Comparing bridged-l1-s0 (A) with contrastive-causal-s0 (B) under eos_bridged" in text, text
            first = _images(output)
            shapes = _shapes(first)
            assert len(first) == 3, f"expected attention, CKA and probe figures; got {shapes}"
            (w, h, spread), *others = shapes
            assert w > 1.8 * h and spread > 10, f"the attention pair is mangled or blank: {shapes}"
            assert all(s > 10 for _, _, s in others), f"a blank figure: {shapes}"
            # a second click of the same pair (the bug's figures came out right from the second click on) must draw
            # the same figures: the first click after a kernel start draws like every other
            output.locator("img").evaluate_all("imgs => imgs.forEach(i => i.dataset.firstClick = '1')")
            button.click()
            expect(output.locator("img[data-first-click]")).to_have_count(0, timeout=60_000)  # cleared, redrawn
            expect(output.locator(".jp-RenderedMarkdown", has_text="Retrieval deltas")).to_be_visible(timeout=120_000)
            page.wait_for_timeout(500)
            second = _images(output)
            assert [p.shape for p in first] == [p.shape for p in second], \
                f"the first click drew other figures than the second: {shapes} then {_shapes(second)}"
            differs = [round(float(abs(p - q).mean()), 2) for p, q in zip(first, second)]
            assert max(differs) < 2, f"the first click's figures differ from the second's (mean |grey diff| {differs})"
            entries, figures, log = _log_console(page)
            if entries:
                page.screenshot(path=str(ARTIFACTS / "compare_log.png"), full_page=True)
            assert entries == 0, (f"{entries} entries ({figures} figures) in JupyterLab's log console after two "
                                  f"clicks: output sent outside the widgets' Output (a pyplot figure flushed by the "
                                  f"inline backend?): {log[:300]!r}")
            stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            assert stderr.count() == 0, stderr.all_inner_texts()
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
            assert errors.count() == 0, errors.all_inner_texts()
        finally:
            if not (ARTIFACTS / "compare.png").exists():
                page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)
            browser.close()
