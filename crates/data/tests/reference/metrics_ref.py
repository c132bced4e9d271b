"""Reference metric values for tests/metrics_parity.rs, from scikit-learn and scipy.

Input JSON: {"classes": [{"preds": [...], "labels": [...]}, ...],
             "scores":  [{"preds": [...], "labels": [...]}, ...]}
Output JSON: the same lists, each case with accuracy, f1 and mcc (sklearn) or pearson and
spearman (scipy); NaN (scipy's answer for constant input) is written as null.

usage: metrics_ref.py IN_JSON OUT_JSON
"""
import json
import math
import sys
import warnings

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def finite_or_none(x):
    x = float(x)
    return None if math.isnan(x) else x


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    warnings.simplefilter("ignore")  # constant-input and zero-division warnings are expected
    out = {"classes": [], "scores": []}
    for c in cases["classes"]:
        p, l = np.array(c["preds"]), np.array(c["labels"])
        binary = set(p.tolist()) | set(l.tolist()) <= {0, 1}
        out["classes"].append(
            {
                "accuracy": float(accuracy_score(l, p)),
                # GLUE's F1 (MRPC, QQP) is binary with class 1 positive.
                "f1": float(f1_score(l, p, pos_label=1, average="binary")) if binary else None,
                "mcc": float(matthews_corrcoef(l, p)),
            }
        )
    for c in cases["scores"]:
        p = np.array(c["preds"], dtype=np.float64)
        l = np.array(c["labels"], dtype=np.float64)
        out["scores"].append(
            {
                "pearson": finite_or_none(pearsonr(p, l)[0]),
                "spearman": finite_or_none(spearmanr(p, l)[0]),
            }
        )
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
