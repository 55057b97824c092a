"""Human-readable evaluation reports: summary lines, a per-class table (txt/csv) and PNG plots.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global backend switch, no display needed):
precision-recall curves at IoU 0.50 and 0.75 (one panel per class, plus the mean) and the LRP-vs-threshold curve of
every class with its optimum marked. Classes without GT get no panel (nothing to plot).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .coco_eval import EvalDetails
from .results_io import write_results

__all__ = ["format_summary", "format_table", "write_reports", "plot_pr_curves", "plot_lrp_curves"]

_AP, _AR, _ALL_IOU = "Average Precision  (AP)", "Average Recall     (AR)", "0.50:0.95"
_SUMMARY_ROWS = (  # (key, label, IoU, area, maxDets index)
    ("AP", _AP, _ALL_IOU, "all", 2), ("AP50", _AP, "0.50", "all", 2), ("AP75", _AP, "0.75", "all", 2),
    ("AP90", _AP, "0.90", "all", 2), ("APs", _AP, _ALL_IOU, "small", 2), ("APm", _AP, _ALL_IOU, "medium", 2),
    ("APl", _AP, _ALL_IOU, "large", 2), ("AR1", _AR, _ALL_IOU, "all", 0), ("AR10", _AR, _ALL_IOU, "all", 1),
    ("AR100", _AR, _ALL_IOU, "all", 2), ("ARs", _AR, _ALL_IOU, "small", 2), ("ARm", _AR, _ALL_IOU, "medium", 2),
    ("ARl", _AR, _ALL_IOU, "large", 2), ("oLRP", "Optimal LRP            ", "0.50", "all", 2),
    ("oLRP_loc", "Optimal LRP Loc        ", "0.50", "all", 2), ("oLRP_fp", "Optimal LRP FP         ", "0.50", "all", 2),
    ("oLRP_fn", "Optimal LRP FN         ", "0.50", "all", 2),
)
_TABLE_COLUMNS = ("AP", "AP50", "AP75", "AP90", "oLRP", "oLRP_loc", "oLRP_fp", "oLRP_fn", "threshold", "rho",
                  "num_gt", "num_dets", "num_tp")
_VARIANT_TEXT = {"grid": "0.01 score grid, aLRP paper", "exact": "exact search over scores, LRP-Error 2021"}


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_summary(metrics: dict, max_dets: int = 100) -> str:
    """pycocotools-style lines for the COCO numbers and AP90, then optimal LRP (lower is better) and ρ."""
    dets = (1, 10, max_dets)
    lines = []
    for key, label, iou, area, m in _SUMMARY_ROWS:
        lines.append(f" {label} @[ IoU={iou:<9} | area={area:>6} | maxDets={dets[m]:>3} ] = "
                     f"{_fmt(metrics.get(key), '.3f')}")
    for size in ("small", "medium", "large"):  # LRP-Error (2021) prints these three after the four "all" lines
        if f"oLRP_{size}" in metrics:
            lines.append(f" Optimal LRP             @[ IoU=0.50      | area={size:>6} | maxDets={max_dets:>3} ] = "
                         f"{_fmt(metrics[f'oLRP_{size}'], '.3f')}")
    lines.append(f" oLRP search: {metrics.get('lrp_variant')} ({_VARIANT_TEXT.get(metrics.get('lrp_variant'), '?')}); "
                 f"oLRP and its components: lower is better")
    lines.append(" rho (Spearman, score vs IoU rankings of the TPs, mean over classes) = "
                 f"{_fmt(metrics.get('rho'), '.3f')}")
    return "\n".join(lines)


def _table_rows(metrics: dict) -> list[list[str]]:
    rows = []
    for name, c in metrics["per_class"].items():
        row = [name]
        for col in _TABLE_COLUMNS:
            v = c.get(col)
            if col.startswith(("AP", "oLRP")):
                row.append(_fmt(None if v is None else 100 * v, ".1f"))
            elif col == "threshold":
                row.append(_fmt(v, ".4f"))
            elif col == "rho":
                row.append(_fmt(v, ".2f"))
            else:
                row.append(str(v))
        rows.append(row)
    return rows


def format_table(metrics: dict) -> str:
    """Per-class table: AP (higher is better) and oLRP (lower is better) columns ×100, threshold, ρ, counts."""
    header = ["class", "AP", "AP50", "AP75", "AP90", "oLRP", "Loc", "FP", "FN", "thr", "rho", "#GT", "#det", "#TP"]
    rows = _table_rows(metrics)
    mean = ["(mean)"] + [_fmt(None if metrics.get(k) is None else 100 * metrics[k], ".1f")
                         for k in ("AP", "AP50", "AP75", "AP90", "oLRP", "oLRP_loc", "oLRP_fp", "oLRP_fn")]
    mean += ["", _fmt(metrics.get("rho"), ".2f"), "", str(metrics.get("num_detections", "")), ""]
    widths = [max(len(r[i]) for r in [header, mean, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(r[0].ljust(widths[0]) if i == 0 else r[i].rjust(widths[i])  # noqa: E731
                              for i in range(len(r)))
    rule = "-" * len(fmt(header))
    title = (f"Per-class results: AP ×100 (higher is better); oLRP and its Loc/FP/FN components ×100 (lower is "
             f"better, {metrics.get('lrp_variant')} search); thr = LRP-optimal score threshold; '-' = undefined")
    return "\n".join([title, rule, fmt(header), rule, *(fmt(r) for r in rows), rule, fmt(mean)])


def _write_csv(metrics: dict, path: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["class", "category_id", *_TABLE_COLUMNS])
    for name, c in metrics["per_class"].items():
        writer.writerow([name, c["category_id"], *("" if c.get(k) is None else c[k] for k in _TABLE_COLUMNS)])
    path.write_text(buf.getvalue())


def _grid_figure(n_panels: int) -> tuple[Figure, list]:
    """A figure with ``n_panels`` small axes, 8 per row (no layout engine: it is slow with ~80 axes)."""
    ncols = min(8, max(1, n_panels))
    nrows = math.ceil(n_panels / ncols)
    height = 2.4 * nrows + 0.6
    fig = Figure(figsize=(2.6 * ncols, height), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={
        "left": 0.3 / ncols, "right": 0.99, "bottom": 0.45 / height, "top": 1 - 0.95 / height,
        "hspace": 0.75, "wspace": 0.35}).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    return fig, axes[:n_panels]


def _style(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel, fontsize=7, labelpad=1)
    ax.set_ylabel(ylabel, fontsize=7, labelpad=1)
    ax.tick_params(labelsize=6, pad=1)


def _evaluated(details: EvalDetails) -> tuple[list[int], int]:
    """Category ids with GT (those get a panel) and how many declared classes were left out."""
    cats = [c for c in details.cat_ids if details.lrp[c].evaluated]
    return cats, len(details.cat_ids) - len(cats)


def plot_pr_curves(details: EvalDetails, path: Path) -> Path:
    """Interpolated precision vs recall at IoU 0.50 and 0.75: the class mean, then one panel per class with GT."""
    cats, skipped = _evaluated(details)
    index = {c: k for k, c in enumerate(details.cat_ids)}
    fig, axes = _grid_figure(len(cats) + 1)
    rec = details.rec_thrs
    for i, ax in enumerate(axes):
        cols = [index[c] for c in cats] if i == 0 else [index[cats[i - 1]]]
        title = "mean over classes" if i == 0 else details.names[cats[i - 1]]
        aps = []
        for iou, style in (("0.50", "-"), ("0.75", "--")):
            if cols:
                curve = details.precision[iou][:, cols].mean(axis=1)  # (R,)
                ax.plot(rec, curve, style, lw=1.3, label=f"IoU {iou}")
                aps.append(f"AP{iou[2:]}={curve.mean():.3f}")
        ax.set_title(f"{title}\n{' '.join(aps)}", fontsize=8)
        _style(ax, "recall", "precision")
        if i == 0:
            ax.legend(fontsize=6, loc="lower left")
    note = f"; {skipped} class(es) without GT not shown" if skipped else ""
    fig.suptitle(f"Precision-recall at IoU 0.50 (solid) and 0.75 (dashed), COCO 101-point interpolation{note}")
    fig.savefig(path)
    return path


def plot_lrp_curves(details: EvalDetails, path: Path) -> Path:
    """LRP vs score threshold per class with GT (lower is better), the LRP-optimal threshold marked."""
    cats, skipped = _evaluated(details)
    fig, axes = _grid_figure(max(1, len(cats)))
    for ax, cat in zip(axes, cats):
        r = details.lrp[cat]
        if r.curve_lrp.size == 0:
            ax.text(0.5, 0.5, "no detections", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        else:
            ax.plot(r.curve_thresholds, r.curve_lrp, lw=1.2)
            if not math.isnan(r.threshold):
                ax.plot([r.threshold], [r.olrp], "o", color="tab:red", ms=4)
        ax.set_title(f"{details.names[cat]}\noLRP={r.olrp:.3f} thr={_fmt(r.threshold, '.3f')}", fontsize=8)
        _style(ax, "score threshold", "LRP")
    note = f"; {skipped} class(es) without GT not shown" if skipped else ""
    fig.suptitle(f"LRP vs score threshold (IoU 0.50, {details.lrp_variant} search; lower is better; red = optimum)"
                 f"{note}")
    fig.savefig(path)
    return path


def write_reports(metrics: dict, out_dir: str | Path, details: EvalDetails | None = None, echo: bool = True,
                  max_dets: int = 100) -> dict[str, Path]:
    """Write metrics.json, per_class.txt/.csv and (with ``details``) the PNG plots into ``out_dir``.

    Prints the summary and the table when ``echo``. Returns the written paths by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary, table = format_summary(metrics, max_dets), format_table(metrics)
    if echo:
        print(summary)
        print(table)
    paths = {"metrics": write_results(metrics, out / "metrics.json", indent=2), "table_txt": out / "per_class.txt",
             "table_csv": out / "per_class.csv"}
    paths["table_txt"].write_text(summary + "\n\n" + table + "\n")
    _write_csv(metrics, paths["table_csv"])
    if details is not None:
        paths["pr_curves"] = plot_pr_curves(details, out / "pr_curves.png")
        paths["lrp_curves"] = plot_lrp_curves(details, out / "lrp_curves.png")
    return paths
