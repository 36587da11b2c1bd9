"""The README's Python snippets run as written (training shortened, outputs to a temporary folder)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippets_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    code = "\n".join(blocks).replace("TrainerConfig(steps=300)", "TrainerConfig(steps=10, progress=False)")
    code = code.replace('"runs/', f'"{tmp_path}/')
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    # the last SMC in the README uses the exact twist and proposal: its log Z is exact up to the
    # default model's float32 rounding (the table's prior is renormalised in float64, each SMC step
    # by the model's float32 softmax: they differ by ~1e-7 over 4 tokens; 1e-6 is ~10x that)
    assert abs(float(scope["ws"].log_z[0]) - scope["post"].log_z) < 1e-6
    assert (tmp_path / "eval" / "report.html").exists()


def test_quickstart_is_two_commands():
    text = README.read_text()
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert len(block) == 2 and "bayes-rlhf demo" in block[0] and "pytest" in block[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert block[1] in ci  # CI runs the README's test command
