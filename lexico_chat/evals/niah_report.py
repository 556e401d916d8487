"""What `eval niah` makes of its rows: the per-cell summary, the totals per method, the text table and the
heatmaps.

* cells: one per (method, setting, length, depth, form): ``hits`` of its ``needles`` trials and the mean
  measured ``kv_fraction``.
* totals: one per (method, setting): hits of all trials, the hit rate with its 95% Wilson interval (the
  spread a rate over this many trials can show by chance), hits per form, mean kv_fraction and the wall
  time of the method's runs.
* ``--plot PATH``: one PNG, one row of panels per needle form and one panel per method and setting; each
  panel a depth x length heatmap of the hit fraction, every cell labelled hits/needles, the title giving the
  panel's hits in all and its mean KV bytes (% of fp16).
"""

from __future__ import annotations

import math

from lexico_chat.output import table

__all__ = ["plot_niah", "summarize", "totals_table", "wilson_interval"]

_CELL = ("method", "setting", "length", "depth", "form")


def wilson_interval(hits: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% (``z`` = 1.96) Wilson score interval of a hit rate of ``hits`` out of ``trials`` (0..1; (0, 1) for
    no trials)."""
    if trials == 0:
        return 0.0, 1.0
    p, zz = hits / trials, z * z / trials
    centre = (p + zz / 2) / (1 + zz)
    half = z * math.sqrt(p * (1 - p) / trials + zz / (4 * trials)) / (1 + zz)
    return max(0.0, centre - half), min(1.0, centre + half)


def _groups(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    """Rows grouped by the values of ``keys``, groups in order of first appearance."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return groups


def _mean_fraction(rows: list[dict]) -> float:
    return sum(r["kv_fraction"] for r in rows) / len(rows)


def summarize(rows: list[dict]) -> dict:
    """``{"cells": [...], "totals": [...]}`` of niah rows (see the module docstring)."""
    cells = [
        {**dict(zip(_CELL, key)), "hits": sum(r["found"] for r in group), "needles": len(group)}
        | {"kv_fraction": _mean_fraction(group)}
        for key, group in _groups(rows, _CELL).items()
    ]
    totals = []
    for (method, setting), group in _groups(rows, ("method", "setting")).items():
        hits = sum(r["found"] for r in group)
        forms = {form: sum(r["found"] for r in part) for (form,), part in _groups(group, ("form",)).items()}
        totals.append(
            {"method": method, "setting": setting, "kv_fraction": _mean_fraction(group), "hits": hits}
            | {"trials": len(group), "hit_rate": hits / len(group), "ci95": list(wilson_interval(hits, len(group)))}
            | {"form_hits": forms, "wall_s": sum(r["seconds"] for r in group)}
        )
    return {"cells": cells, "totals": totals}


def totals_table(result: dict) -> str:
    """The totals as a text table (one line per method and setting)."""
    headers = ["method", "setting", "KV % of fp16", "hits", "rate", "95% interval", "by form", "wall"]
    lines = [
        [
            *(t["method"], t["setting"], f"{100 * t['kv_fraction']:.1f}%", f"{t['hits']}/{t['trials']}"),
            *(f"{100 * t['hit_rate']:.0f}%", "{:.0f}-{:.0f}%".format(*(100 * x for x in t["ci95"]))),
            *(" ".join(f"{form} {hits}" for form, hits in t["form_hits"].items()), f"{t['wall_s']:.0f} s"),
        ]
        for t in result["totals"]
    ]
    return table(headers, lines)


def plot_niah(result: dict, path: str) -> None:
    """Save the hit-fraction heatmaps of ``result`` (rows: forms; columns: methods and settings) as a PNG."""
    from lexico_chat.evals.harness import new_figure, save_figure

    cells = result["cells"]
    panels = list(dict.fromkeys((c["method"], c["setting"]) for c in cells))
    forms = list(dict.fromkeys(c["form"] for c in cells))
    figure = new_figure(figsize=(3.2 * len(panels), 3.0 * len(forms)), layout="constrained")
    for row, form in enumerate(forms):
        for col, panel in enumerate(panels):
            axes = figure.add_subplot(len(forms), len(panels), row * len(panels) + col + 1)
            mine = [c for c in cells if (c["method"], c["setting"]) == panel and c["form"] == form]
            _heatmap(axes, mine, f"{form}: {' '.join(panel)}", first=col == 0, last=row == len(forms) - 1)
    save_figure(figure, path)


def _heatmap(axes, cells: list[dict], title: str, first: bool, last: bool) -> None:
    """Depth x length grid of hits / needles on ``axes``, each cell labelled "hits/needles"; the title adds the
    hits in all and the mean KV bytes (% of fp16)."""
    lengths = sorted({c["length"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    grid = [[float("nan")] * len(lengths) for _ in depths]
    for c in cells:
        i, j = depths.index(c["depth"]), lengths.index(c["length"])
        grid[i][j] = c["hits"] / c["needles"]
        axes.text(j, i, f"{c['hits']}/{c['needles']}", ha="center", va="center", fontsize=8)
    axes.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    axes.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    axes.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    axes.set_xlabel("haystack tokens" if last else "")
    axes.set_ylabel("needle depth" if first else "")
    hits, needles = sum(c["hits"] for c in cells), sum(c["needles"] for c in cells)
    axes.set_title(f"{title}: {hits}/{needles} at {100 * _mean_fraction(cells):.0f}% KV", fontsize=9)
