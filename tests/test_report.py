"""Run directories (save_run / load_run), the HTML report, and the report / evaluate commands."""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
import shutil
import stat
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.commands import evaluate as evaluate_cmd
from bayes_rlhf.commands import report as report_cmd
from bayes_rlhf.diagnostics.weights import EmptySamplesError
from bayes_rlhf.errors import ConfigError, TokenizerMismatchError
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.diagnostics.run_dir import RunDirError, load_run, save_run
from bayes_rlhf.report import write_report


def _policy_table(post):
    return torch.log_softmax(0.6 * post.prior_log_probs, 0)


def _samples(post, n=120):
    g = torch.Generator().manual_seed(0)
    rows = torch.multinomial(post.prior_log_probs.exp(), n, replacement=True, generator=g)
    return SimpleNamespace(ids=post.completion_ids[rows], mask=post.mask[rows], rewards=post.rewards[rows],
                           log_weights=post.rewards[rows] / post.beta, log_z=torch.tensor([0.3], dtype=torch.float64))


HISTORY = [{"step": i, "objective": 0.1 * i, "kl_prior": 0.3 + 0.05 * (-1) ** i,
            "kl_q_posterior": 1.0 / (i + 1) if i % 2 == 0 else None} for i in range(5)]


@pytest.fixture(scope="module")
def run_dir(gpt2_post, tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    save_run(d, [gpt2_post], policies={"tempered": [_policy_table(gpt2_post)]}, histories={"train": HISTORY},
             samples={"importance": _samples(gpt2_post)}, extra={"seed": 0})
    return d


def test_save_and_load_round_trip(run_dir, gpt2_post):
    run = load_run(run_dir)
    (post,) = run.posteriors
    assert torch.equal(post.completion_ids, gpt2_post.completion_ids)
    assert post.log_z == pytest.approx(gpt2_post.log_z, abs=1e-12) and post.prompt == gpt2_post.prompt
    assert post.completions[:20] == gpt2_post.completions[:20]  # decoded by the saved tokenizer
    assert torch.equal(post.token_posterior([3]), gpt2_post.token_posterior([3]))
    assert torch.equal(run.policies["tempered"][0], _policy_table(gpt2_post))
    assert run.histories["train"] == HISTORY
    assert torch.equal(run.samples["importance"]["log_weights"], _samples(gpt2_post).log_weights)
    assert run.summary["samples"]["importance"]["log_z"] == [0.3]
    assert run.summary["extra"] == {"seed": 0}
    assert set(run.summary["files"]) >= {"posterior_0.safetensors", "inference_data.nc", "history_train.json"}
    assert run.inference_data_path.is_file()
    # the saved importance draws become a point of the report's frontier (self-normalised E[r])
    from bayes_rlhf.report import _sampler_points

    (pt,) = _sampler_points(run, post, 0)
    s = _samples(gpt2_post)
    assert pt.reward == pytest.approx(float((torch.softmax(s.log_weights, 0) * s.rewards).sum()), rel=1e-9)


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_and_half_written_run_dirs(run_dir, tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        load_run(tmp_path / "nope")
    d = _copy(run_dir, tmp_path / "no_summary")
    (d / "summary.json").unlink()  # writing was interrupted before the summary
    with pytest.raises(RunDirError, match="no summary.json"):
        write_report(d)
    d = _copy(run_dir, tmp_path / "truncated")
    f = d / "posterior_0.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(RunDirError, match="half-written"):
        load_run(d)
    d = _copy(run_dir, tmp_path / "deleted")
    (d / "inference_data.nc").unlink()
    with pytest.raises(RunDirError, match="missing"):
        load_run(d)
    d = _copy(run_dir, tmp_path / "garbage")
    (d / "summary.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        load_run(d)
    (d / "summary.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(RunDirError, match="summary"):
        load_run(d)


def test_save_run_bad_input(gpt2_post, tmp_path):
    with pytest.raises(ConfigError, match="non-empty"):
        save_run(tmp_path / "a", [])
    with pytest.raises(ConfigError, match="one log q"):
        save_run(tmp_path / "b", [gpt2_post], policies={"p": [torch.zeros(3)]})
    with pytest.raises(EmptySamplesError):
        save_run(tmp_path / "c", [gpt2_post], samples={"s": SimpleNamespace(log_weights=torch.zeros(0))})
    with pytest.raises(TokenizerMismatchError):
        save_run(tmp_path / "d", [gpt2_post], policies={"p": tiny_lm("gpt2", vocab_size=10)})
    assert not (tmp_path / "d" / "summary.json").exists()


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.tables = [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "table":
            self.tables += 1


def _check_report(path, min_figures=5):
    p = _Refs()
    p.feed(path.read_text(encoding="utf-8"))
    assert len(p.imgs) >= min_figures and p.tables >= 3
    for src in p.imgs:
        if src.startswith("data:image/png;base64,"):
            assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
        else:
            assert (path.parent / src).is_file(), src
    for href in p.links:
        assert (path.parent / href).is_file(), href
    return p


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


def _parser():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers()
    evaluate_cmd.register(sub)
    report_cmd.register(sub)
    return ap


def test_commands_reject_bad_input(tmp_path, default):
    other = tmp_path / "other"
    tiny_lm("gpt2", vocab_size=8).save_pretrained(other)
    args = _parser().parse_args(["evaluate", "--policy", str(other), "--prompt", "the movie was"])
    with pytest.raises(TokenizerMismatchError, match="another tokenizer"):
        args.func(args)
    args = _parser().parse_args(["report", str(tmp_path / "missing")])
    with pytest.raises(RunDirError):
        args.func(args)
    args = _parser().parse_args(["evaluate", "--policy", str(other), "--model", str(other)])
    with pytest.raises(ConfigError, match="--prompt"):
        args.func(args)


def test_cli_prints_a_clear_error(tmp_path, capsys):
    cli = pytest.importorskip("bayes_rlhf.cli")
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


@pytest.mark.slow
def test_evaluate_end_to_end(tmp_path, default, capsys):
    lm, _ = default
    lm.save_pretrained(tmp_path / "policy")  # the prior itself as the "fine-tuned" policy
    args = _parser().parse_args(["evaluate", "--policy", str(tmp_path / "policy"), "--prompt", "the movie was",
                                 "--max-new-tokens", "2", "--out", str(tmp_path / "eval")])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("q = the checkpoint as saved")  # which reading of q the table shows
    header, row = out[1].split("\t"), out[2].split("\t")
    values = dict(zip(header[1:], map(float, row[1:])))
    post = br.exact_posterior(br.Target(lm, default[1], 1.0, 2), "the movie was")
    assert values["kl_q_prior"] == pytest.approx(0.0, abs=1e-6)
    assert values["optimal_objective"] == pytest.approx(post.optimal_objective, rel=1e-5)
    assert values["mean_reward"] == pytest.approx(post.prior_mean_reward, abs=1e-5)
    _check_report(tmp_path / "eval" / "report.html", min_figures=3)  # frontier, rewards, first token


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
