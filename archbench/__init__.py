"""archbench: ResNet-18 against plain-18 and VGG11/16 (with and without BN), one loop, one report."""

__version__ = "0.1.0"


def load_runs(path="runs"):
    """The study-wide per-seed results of the run records under `path` as a pandas DataFrame: one row per
    model group and seed (the run that counts), the same rows as REPORT-results.csv. Reading it imports
    neither torch nor the training code."""
    from archbench.report.study import load_results

    return load_results(path)
