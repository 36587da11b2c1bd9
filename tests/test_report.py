"""The HTML report of a run directory (write_report); the run directory itself is tested in
tests/diagnostics/test_run_dir.py, the report and evaluate commands in tests/commands/."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from bayes_rlhf.diagnostics.run_dir import load_run, save_run
from bayes_rlhf.report import write_report
from tests.saved_runs import HISTORY, write_run
from tests.saved_runs import check_report as _check_report
from tests.saved_runs import copy_run as _copy
from tests.saved_runs import samples as _samples


@pytest.fixture(scope="module")
def run_dir(gpt2_post, tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"), gpt2_post)


def test_saved_samples_are_a_frontier_point(run_dir, gpt2_post):
    # the saved importance draws become a point of the report's frontier (self-normalised E[r])
    run = load_run(run_dir)
    (post,) = run.posteriors
    from bayes_rlhf.report import _sampler_points

    (pt,) = _sampler_points(run, post, 0)
    s = _samples(gpt2_post)
    assert pt.reward == pytest.approx(float((torch.softmax(s.log_weights, 0) * s.rewards).sum()), rel=1e-9)


@pytest.mark.slow
def test_report_renders(run_dir, tmp_path):
    embedded = _check_report(write_report(run_dir, betas=[0.2, 1.0, 5.0], best_of_n=[1, 4]))
    assert all(s.startswith("data:") for s in embedded.imgs)
    d = _copy(run_dir, tmp_path / "linked")
    linked = _check_report(write_report(d, betas=[0.2, 1.0, 5.0], best_of_n=None, embed_figures=False))
    assert all(s.startswith("figures/") for s in linked.imgs)
    names = {f.name for f in (d / "figures").iterdir()}
    assert {"frontier_0.pdf", "frontier_0.png", "weights.pdf", "training_train.png"} <= names
    assert "nats" in (d / "report.html").read_text()


@pytest.fixture(scope="module")
def report_page(run_dir, tmp_path_factory):
    """The report of ``run_dir`` (embedded figures), written into a copy."""
    d = _copy(run_dir, tmp_path_factory.mktemp("page") / "run")
    return write_report(d, betas=[0.2, 1.0, 5.0], best_of_n=[1, 4])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.slow
def test_report_is_published_with_the_umask_mode(report_page):
    # mkstemp makes files 0600; the report is read by others like every other file of the run
    assert stat.S_IMODE(report_page.stat().st_mode) == 0o666 & ~_umask()
    summary = report_page.parent / "summary.json"
    assert stat.S_IMODE(report_page.stat().st_mode) == stat.S_IMODE(summary.stat().st_mode)


def test_cells_never_print_negative_zero():
    from bayes_rlhf.report_html import fmt

    assert fmt(-4e-9, "kl_posterior_prior") == "0"  # float32 masses summing to 1 + 4e-9
    assert fmt(-0.0, "log_z") == "0" and fmt(-0.0) == "0"
    assert fmt(-4e-9, "log_z") == "-4e-09"  # not a divergence: printed as it is
    assert fmt(-0.02, "kl_q_posterior") == "-0.02"  # a real negative is not hidden
    assert fmt(float("-inf"), "khat") == "−∞" and fmt(float("nan")) == "NaN"


def test_history_panels_use_human_names():
    from bayes_rlhf.report import _history_panels

    panels = _history_panels(HISTORY)
    titles = [t for t, _, _ in panels]
    assert len(panels) == 3 and "per-batch" in titles[2] and "posterior" in titles[0]
    exact, batch = panels[0][2], panels[2][2]
    assert list(exact) == ["KL(q || $\\pi^*$), exact"] and list(batch) == ["KL(q || $\\pi_0$), one batch"]
    assert exact["KL(q || $\\pi^*$), exact"][1] != exact["KL(q || $\\pi^*$), exact"][1]  # None -> NaN
    assert all(not re.search(r"[a-z]_[a-z]", re.sub(r"\$[^$]*\$", "", n)) for _, _, s in panels for n in s)


def _captions(page: Path) -> list[str]:
    return [html.unescape(c) for c in re.findall(r"<figcaption>(.*?) \(<a", page.read_text(encoding="utf-8"))]


@pytest.mark.slow
def test_report_reads_well(report_page, gpt2_post):
    text = report_page.read_text(encoding="utf-8")
    assert not re.search(r">-0(\.0*)?<", text)  # no cell prints -0 or -0.0000
    assert "kl_posterior_prior" not in text and "KL(π* ‖ π₀)" in text  # human names, not column names
    caps = _captions(report_page)
    tokens = [c for c in caps if c.startswith("Next-token")]
    assert len(tokens) == 2 and "first completion token after the prompt 'w1 w2'" in tokens[0]
    assert all("after ''" not in c for c in caps) and all("policy tempered" in c for c in tokens)
    assert any("sampler importance" in c for c in caps)
    bare = report_page.parent.parent / "bare"
    save_run(bare, [gpt2_post])  # no policies, samples or histories: no caption may claim them
    caps = _captions(write_report(bare, betas=[0.5, 1.0], best_of_n=None))
    assert caps and all("polic" not in c and "sampler" not in c and "best-of-N" not in c for c in caps), caps


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_PROBE = """<script>window.addEventListener("load", () => {
  const d = document.documentElement;
  document.title = JSON.stringify({page: [d.scrollWidth, d.clientWidth],
    tables: [...document.querySelectorAll("table")].map(t => [t.scrollWidth, t.clientWidth]),
    images: [...document.images].map(i => [i.naturalWidth, Math.ceil(i.getBoundingClientRect().right)])});
});</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,3000", *args],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless chromium is not installed (apt-get install chromium)")
def test_report_fits_the_page_in_a_browser(report_page, tmp_path):
    from PIL import Image

    probe = tmp_path / "probe.html"  # the report plus a script that measures the laid-out page
    probe.write_text(report_page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"),
                     encoding="utf-8")
    dom = _chromium(tmp_path, "--virtual-time-budget=20000", "--dump-dom", probe.as_uri()).stdout
    m = json.loads(html.unescape(re.search(r"<title>(.*?)</title>", dom, re.S).group(1)))
    width, client = m["page"]
    assert width <= client, f"the page is {width} px wide in a {client} px window"
    assert m["tables"] and all(sw <= cw + 1 for sw, cw in m["tables"]), m["tables"]  # no table scrolls
    assert len(m["images"]) >= 5 and all(n > 0 and right <= client for n, right in m["images"]), m["images"]
    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", report_page.as_uri())
    img = Image.open(shot).convert("L")
    assert img.size == (1280, 3000)
    pixels = img.load()
    assert min(pixels[x, y] for x in range(0, 1280, 7) for y in range(0, 3000, 7)) < 100  # something is drawn
    # the right margin (left of any scrollbar) is blank: nothing runs past the 1100 px column
    margin = [pixels[x, y] for x in range(1205, 1255, 3) for y in range(0, 2950, 5)]
    assert min(margin) > 240
