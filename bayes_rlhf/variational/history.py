"""``TrainingHistory``: one row of metrics per training step, streamed to JSONL / CSV / TensorBoard.

Columns (natural-log units; rewards in the reward's own units)::

    step            1-based step number
    objective       estimate of J(q) = E_q[r] - beta KL(q || pi0) from policy samples
    mean_reward     estimate of E_q[r]
    kl_prior        estimate of KL(q || pi0)          (mean of log q - log pi0)
    entropy         estimate of the sequence entropy H(q)   (mean of -log q)
    loss            the objective's loss
    grad_norm       global gradient norm before clipping
    tokens_per_s    generated tokens per second of wall time in the step
    reward_evals    cumulative number of reward evaluations
    time            cumulative wall time of the steps (s; evaluations excluded)
    cpu_time        cumulative CPU time of this process in the steps (s; steadier on a shared machine)
    kl_q_posterior, kl_posterior_q
                    exact KL(q || pi*) and KL(pi* || q), averaged over prompts, at evaluated steps
                    (None elsewhere, and when no evaluator is attached); pi* at the step's beta
    kl_prior_exact  exact KL(q || pi0), averaged over prompts, at evaluated steps
    log_z           the learned log Z (trajectory balance), averaged over prompts
    beta            the step's beta: the target's, or the KL controller's (``kl_target``)
    elbo, eubo, kl_sandwich, kl_q_posterior_est, kl_posterior_q_est
                    sampled estimates at evaluated steps with a SandwichEvaluator (large models)
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

COLUMNS = ("step", "objective", "mean_reward", "kl_prior", "entropy", "loss", "grad_norm", "tokens_per_s",
           "reward_evals", "time", "cpu_time", "kl_q_posterior", "kl_posterior_q", "log_z", "beta",
           "kl_prior_exact")


class TrainingHistory:
    """Rows of per-step metrics (dicts of plain floats), with optional live sinks.

    Parameters
    ----------
    jsonl, csv_path : path, optional
        Files that receive each row as it is appended (JSONL: one JSON object a line).
    tensorboard_dir : path, optional
        A TensorBoard log dir; used only when ``torch.utils.tensorboard`` can be imported.
    """

    def __init__(self, rows: list[dict] | None = None, jsonl=None, csv_path=None, tensorboard_dir=None):
        self.rows: list[dict] = [dict(r) for r in (rows or [])]
        self._jsonl = Path(jsonl) if jsonl else None
        self._csv = Path(csv_path) if csv_path else None
        self._tb = None
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(tensorboard_dir))
            except ImportError:
                self._tb = None
        for path in (self._jsonl, self._csv):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
        self._rewrite()

    def _rewrite(self) -> None:
        """Write the files from the rows held (used on creation and on resume)."""
        if self._jsonl is not None:
            self.to_jsonl(self._jsonl)
        if self._csv is not None:
            self.to_csv(self._csv)

    def append(self, row: dict) -> None:
        """Add one step's row and send it to the sinks."""
        row = {k: row.get(k) for k in COLUMNS} | {k: v for k, v in row.items() if k not in COLUMNS}
        self.rows.append(row)
        if self._jsonl is not None:
            with open(self._jsonl, "a") as fh:
                fh.write(json.dumps(_jsonable(row)) + "\n")
        if self._csv is not None:
            new = not self._csv.exists() or self._csv.stat().st_size == 0
            with open(self._csv, "a", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow(_jsonable(row))
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                    self._tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    @property
    def last(self) -> dict:
        return self.rows[-1]

    def column(self, name: str) -> list:
        """The values of one column, one per row (None where not measured)."""
        return [r.get(name) for r in self.rows]

    def evaluated(self) -> list[dict]:
        """The rows with an exact evaluation."""
        return [r for r in self.rows if r.get("kl_q_posterior") is not None]

    def to_jsonl(self, path) -> Path:
        path = Path(path)
        with open(path, "w") as fh:
            for r in self.rows:
                fh.write(json.dumps(_jsonable(r)) + "\n")
        return path

    def to_csv(self, path) -> Path:
        path = Path(path)
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
            w.writeheader()
            for r in self.rows:
                w.writerow(_jsonable(r))
        return path

    @classmethod
    def from_jsonl(cls, path) -> "TrainingHistory":
        from bayes_rlhf.io import json_restore

        with open(path) as fh:  # the non-finite values written as strings come back as floats
            return cls([json_restore(json.loads(line)) for line in fh if line.strip()])


def _jsonable(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = str(v)  # JSON has no inf/nan
        out[k] = v
    return out
