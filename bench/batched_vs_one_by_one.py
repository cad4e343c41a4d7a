"""Do blocks timed one by one in this process and as one agent batch give the same table?

Builds the same small digits table twice (``deploy.lut.build_table``: one by one here, then
one batch through the agent of ``deploy.targets.LocalTarget``) and compares the entries in
probe units: the median and spread of batched / one-by-one per block, and Kendall tau of
the two orders. ``--rounds`` pairs of builds, one after the other.

    python bench/batched_vs_one_by_one.py --rounds 3

Writes ``bench/results/batched_vs_one_by_one.json`` (date, commit, machine) and prints the
table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, run_facts, write_json  # noqa: E402

from deploy.lut import build_table  # noqa: E402
from deploy.ontarget.runtimes import TimingProtocol  # noqa: E402
from deploy.targets import LocalTarget  # noqa: E402
from ofa.space import get_space  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, choices=range(1, 21), metavar="1-20")
    a = ap.parse_args()
    space = get_space("mbv3-digits", ks_list=[3, 7], expand_list=[3, 6], depth_list=[2],
                      resolutions=[16])
    proto = TimingProtocol(warmup=5, runs=30, trials=6)  # blocks of 6-60 us
    rows = []
    for i in range(a.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            one = build_table(space, [16], "onnxruntime", Path(tmp) / "one.json",
                              protocol=proto, calib=0).entries["16"]
            many = build_table(space, [16], "onnxruntime", Path(tmp) / "many.json",
                               protocol=proto, calib=0, target=LocalTarget(),
                               batch=64).entries["16"]
        keys = sorted(one)
        ratios = np.array([many[k]["rel"] / one[k]["rel"] for k in keys])
        rows.append({"round": i + 1, "blocks": len(keys),
                     "median_ratio": round(float(np.median(ratios)), 3),
                     "ratio_p10": round(float(np.percentile(ratios, 10)), 3),
                     "ratio_p90": round(float(np.percentile(ratios, 90)), 3),
                     "kendall_tau": round(float(kendalltau([one[k]["rel"] for k in keys],
                                                           [many[k]["rel"] for k in keys])[0]),
                                          3)})
    print_table(rows)
    write_json("batched_vs_one_by_one", {**run_facts(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
