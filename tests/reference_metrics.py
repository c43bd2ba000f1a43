"""Slow, plainly written reference computations the fast metrics are checked against (shared by the metric tests)."""

import numpy as np


def loop_two_way(gt, rec):
    """Two-way identification by explicit loops over np.corrcoef: for each reconstruction j, the fraction of other
    ground truths i != j less correlated with it than its own (strict), averaged over j."""
    n = len(gt)
    scores = []
    for j in range(n):
        rjj = np.corrcoef(gt[j].ravel(), rec[j].ravel())[0, 1]
        wins = sum(np.corrcoef(gt[i].ravel(), rec[j].ravel())[0, 1] < rjj for i in range(n) if i != j)
        scores.append(wins / (n - 1))
    return float(np.mean(scores))
