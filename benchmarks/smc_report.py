"""Cost against accuracy for ``benchmarks/smc.py``: per-point summaries, equal-RMSE ratios, the figure.

Equal-RMSE read-off (``cost_at``): a sampler's points (mean cost per run, RMSE of log Z_hat) over
its N sweep, without the points where some run lost every particle (their RMSE, over the
surviving runs only, would flatter them), reduced to the frontier (each kept point is more
accurate than every cheaper one), then log cost interpolated linearly in log RMSE between
neighbouring frontier points. ``ratio`` evaluates peer cost / our cost on 25 RMSE levels spread
geometrically over the range both curves cover and reports the middle level's ratio and the
range; where one side's frontier is a single point inside the other's RMSE range, the other
curve is read at that point's RMSE; where the curves do not overlap it gives the bound the
measured points imply instead.
"""

from __future__ import annotations

import math
import statistics

from smc_shared import rmse_with_se

COSTS = {"seconds": "wall seconds per run", "positions": "model positions per run (rows x new positions)"}


def summarise(records: list, refs: dict) -> dict:
    """{task: {sampler: [point per N]}}: RMSE (bootstrap SE), failures, mean cost, throughput."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["task"], r["sampler"], r["N"]), []).append(r)
    out: dict = {}
    for (task, sampler, N), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        point = {"N": N, **rmse_with_se([r["log_z"] for r in rs], refs[task]),
                 "seconds": statistics.fmean(r["seconds"] for r in rs),
                 "positions": statistics.fmean(r["positions"] for r in rs),
                 "log_z": [r["log_z"] for r in rs]}
        point["positions_per_second"] = point["positions"] / point["seconds"]
        out.setdefault(task, {}).setdefault(sampler, []).append(point)
    return out


def frontier(points: list, cost: str) -> list:
    """(cost, rmse) of the points without failures, each more accurate than every cheaper one."""
    ok = sorted((p[cost], p["rmse"]) for p in points if p["failures"] == 0 and p["rmse"] > 0)
    front: list = []
    for c, e in ok:
        if not front or e < front[-1][1]:
            front.append((c, e))
    return front


def cost_at(front: list, rmse: float) -> float:
    """Cost at ``rmse`` on the frontier, log-log linear between neighbours (NaN outside its range)."""
    if not front:
        return math.nan
    if len(front) == 1:
        return front[0][0] if math.isclose(front[0][1], rmse, rel_tol=1e-9) else math.nan
    for (c0, e0), (c1, e1) in zip(front, front[1:]):
        if e1 <= rmse <= e0:
            f = (math.log(rmse) - math.log(e0)) / (math.log(e1) - math.log(e0))
            return math.exp(math.log(c0) + f * (math.log(c1) - math.log(c0)))
    return math.nan


def ratio(ours: list, peer: list, cost: str) -> dict:
    """peer cost / our cost at equal RMSE (see the module docstring)."""
    fo, fp = frontier(ours, cost), frontier(peer, cost)
    if not fo or not fp:
        return {"kind": "none", "text": "no point without failures on one side"}
    lo = max(min(e for _, e in fo), min(e for _, e in fp))
    hi = min(max(e for _, e in fo), max(e for _, e in fp))
    if lo <= hi and (len(fo) == 1) != (len(fp) == 1):
        # one side's curve is a single point inside the other's RMSE range (then lo = hi = its RMSE):
        # read the other curve at that RMSE, one level only
        r_one = cost_at(fp, lo) / cost_at(fo, lo)
        if math.isfinite(r_one):
            side = "our" if len(fo) == 1 else "the peer's"
            return {"kind": "interpolated", "ratio": r_one, "min": r_one, "max": r_one, "rmse_range": [lo, hi],
                    "text": f"x{r_one:.2f} at RMSE {lo:.3g} ({side} frontier is one point; the other curve "
                            "read there)"}
    if lo <= hi and len(fo) > 1 and len(fp) > 1:
        levels = [math.exp(math.log(lo) + i / 24 * (math.log(hi) - math.log(lo))) for i in range(25)]
        rs = [cost_at(fp, e) / cost_at(fo, e) for e in levels]
        rs = [r for r in rs if math.isfinite(r)]
        if rs:
            mid = math.sqrt(lo * hi)
            r_mid = cost_at(fp, mid) / cost_at(fo, mid)
            return {"kind": "interpolated", "ratio": r_mid, "min": min(rs), "max": max(rs), "rmse_range": [lo, hi],
                    "text": f"x{r_mid:.2f} at RMSE {mid:.3g} (x{min(rs):.2f}-x{max(rs):.2f} over RMSE "
                            f"{lo:.3g}-{hi:.3g})"}
    # no overlap: what the measured points imply
    o_best, p_best = min(e for _, e in fo), min(e for _, e in fp)
    if max(e for _, e in fo) < p_best:  # ours is more accurate at its cheapest than the peer at its dearest
        bound = max(c for c, _ in fp) / min(c for c, _ in fo)
        return {"kind": "lower_bound", "ratio": bound,
                "text": f">= x{bound:.2f} (our cheapest point, RMSE {fo[0][1]:.3g}, beats the peer's most "
                        f"accurate, RMSE {p_best:.3g})"}
    if max(e for _, e in fp) < o_best:
        bound = min(c for c, _ in fp) / max(c for c, _ in fo)
        return {"kind": "upper_bound", "ratio": bound,
                "text": f"<= x{bound:.2f} (the peer's cheapest point, RMSE {fp[0][1]:.3g}, beats our most "
                        f"accurate, RMSE {o_best:.3g})"}
    return {"kind": "none", "text": "the curves touch in one point only; no ratio read off"}


def headline(summary: dict, ours: list, peers: dict, cost: str) -> dict:
    """{task: {peer: {...}}}: for each peer mode our best sampler's ratio; the peer at its best is
    the mode with the smallest such ratio."""
    out: dict = {}
    for task, by in summary.items():
        for peer, modes in peers.items():
            rows = []
            for mode in modes:
                if mode not in by:
                    continue
                best = None
                for o in ours:
                    if o not in by:
                        continue
                    r = ratio(by[o], by[mode], cost)
                    if "ratio" in r and (best is None or r["ratio"] > best[1]["ratio"]):
                        best = (o, r)
                if best is not None:
                    rows.append((mode, *best))
            if rows:
                mode, o, r = min(rows, key=lambda row: row[2]["ratio"])
                out.setdefault(task, {})[peer] = {"peer_mode": mode, "ours": o, **r}
    return out


def figure(summary: dict, task_titles: dict, path_stem):
    """RMSE of log Z_hat against cost, one column per task, seconds (top) and positions (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    tasks = list(summary)
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 7.2), squeeze=False)
    samplers = sorted({s for by in summary.values() for s in by})
    style = {s: (f"C{i % 10}", "os^vDPX*"[i % 8]) for i, s in enumerate(samplers)}
    for j, task in enumerate(tasks):
        for i, cost in enumerate(COSTS):
            ax = axes[i][j]
            for s, pts in summary[task].items():
                colour, marker = style[s]
                pts = [p for p in pts if math.isfinite(p["rmse"])]
                xs, ys = [p[cost] for p in pts], [p["rmse"] for p in pts]
                ax.plot(xs, ys, color=colour, lw=1, alpha=0.7)
                for p in pts:  # hollow: some run of this point lost every particle
                    ax.errorbar(p[cost], p["rmse"], yerr=p["rmse_se"] if math.isfinite(p["rmse_se"]) else None,
                                color=colour, marker=marker, ms=6, mfc="none" if p["failures"] else colour,
                                capsize=2, lw=0.8, label=s if p is pts[0] else None)
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):  # ticks at 1, 2, 5 x 10^n, plainly labelled
                axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xlabel(COSTS[cost])
            if j == 0:
                ax.set_ylabel("RMSE of log Z_hat")
            if i == 0:
                ax.set_title(task_titles.get(task, task), fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for ax in row:
            h, lab = ax.get_legend_handles_labels()
            for hh, ll in zip(h, lab):
                if ll not in labels:
                    handles.append(hh)
                    labels.append(ll)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    fig.suptitle("SMC on SmolLM2-135M: log Z error against cost (hollow: some run lost every particle)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    for ext in ("pdf", "png"):
        fig.savefig(f"{path_stem}.{ext}", dpi=130)
    plt.close(fig)
