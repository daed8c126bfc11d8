"""A picture of a `Report`: how well the model's confidence matches its accuracy, and how far
apart it puts the better and the worse response of each pair."""

from __future__ import annotations

from pathlib import Path

from megatron_rm.scoring.report import Report

FIGURE_SIZE = (10.0, 4.0)
"""Inches; at DPI, the image is 1000 x 400 pixels."""
DPI = 100


def plot_report(report: Report, path: str | Path) -> None:
    """Write a reliability diagram (left) and chosen/rejected reward histograms (right) to `path`
    (the format follows its suffix, e.g. .png or .pdf)."""
    # Imported here: only --plot needs matplotlib, and Agg draws without a display.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, (reliability, histograms) = plt.subplots(1, 2, figsize=FIGURE_SIZE, dpi=DPI)
    try:
        _reliability_diagram(reliability, report)
        chosen, rejected = np.asarray(report.chosen_rewards), np.asarray(report.rejected_rewards)
        edges = np.histogram_bin_edges(np.concatenate([chosen, rejected]), bins=40)
        histograms.hist(chosen, bins=edges, alpha=0.5, label="better (chosen)")
        histograms.hist(rejected, bins=edges, alpha=0.5, label="worse (rejected)")
        histograms.set(xlabel="reward", ylabel="pairs", title=f"rewards of {len(chosen)} pairs")
        histograms.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)


def _reliability_diagram(axes, report: Report) -> None:
    """Per confidence bin: a bar up to its accuracy with its pair count at the foot, and a point at
    (mean confidence, accuracy); a calibrated model's points lie on the diagonal."""
    filled = [one for one in report.reliability if one.count]
    axes.bar([one.lower for one in filled], [one.accuracy for one in filled], align="edge",
             width=[one.upper - one.lower for one in filled], alpha=0.3, edgecolor="black",
             label="bin accuracy (pairs)")
    for one in filled:
        axes.annotate(str(one.count), ((one.lower + one.upper) / 2, 0.02), ha="center", va="bottom", fontsize=7)
    axes.plot([one.confidence for one in filled], [one.accuracy for one in filled], "o-", label="at mean confidence")
    axes.plot([0.5, 1.0], [0.5, 1.0], "--", color="gray", label="calibrated")
    ece = report.overall.get("ece", float("nan"))
    axes.set(xlim=(0.5, 1.0), ylim=(0.0, 1.05), xlabel="confidence max(p, 1 - p)", ylabel="accuracy",
             title=f"reliability (ECE {ece:.4f})")
    axes.legend(loc="upper left")
