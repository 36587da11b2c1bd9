"""What the run-directory, report and command tests share: a saved run and a report checker."""

from __future__ import annotations

import base64
import shutil
from html.parser import HTMLParser
from types import SimpleNamespace

import torch

from bayes_rlhf.diagnostics.run_dir import save_run

HISTORY = [{"step": i, "objective": 0.1 * i, "kl_prior": 0.3 + 0.05 * (-1) ** i,
            "kl_q_posterior": 1.0 / (i + 1) if i % 2 == 0 else None} for i in range(5)]


def policy_table(post):
    return torch.log_softmax(0.6 * post.prior_log_probs, 0)


def samples(post, n=120):
    g = torch.Generator().manual_seed(0)
    rows = torch.multinomial(post.prior_log_probs.exp(), n, replacement=True, generator=g)
    return SimpleNamespace(ids=post.completion_ids[rows], mask=post.mask[rows], rewards=post.rewards[rows],
                           log_weights=post.rewards[rows] / post.beta, log_z=torch.tensor([0.3], dtype=torch.float64))


def write_run(d, post):
    """A run directory of one posterior with a policy table, a training history and importance samples."""
    save_run(d, [post], policies={"tempered": [policy_table(post)]}, histories={"train": HISTORY},
             samples={"importance": samples(post)}, extra={"seed": 0})
    return d


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


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


def check_report(path, min_figures=5):
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
