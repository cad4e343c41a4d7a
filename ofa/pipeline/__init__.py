"""``ofa run``: the whole product on one dataset, step by step, resumable.

train -> accuracy predictor -> latency lookup table -> search (budgets + Pareto front) ->
measured budget -> [fine-tune] -> export (ONNX + TFLite) and measure on the target ->
report, one :class:`~ofa.pipeline.steps.Step` each (:data:`~ofa.pipeline.steps.STEPS`).
Every step writes into ``runs/<name>/`` and is skipped on a re-run when its output is
already there and valid::

    runs/<name>/supernet/          the trained run (checkpoint, safetensors, run.json, metrics)
    runs/<name>/supernet/acc_predictor.safetensors (+ .json, .dataset.jsonl)
    runs/<name>/latency_table.json (a shipped table verified here, or one built here)
    runs/<name>/search.json        chosen subnet per budget + the Pareto front
    runs/<name>/budget.json        each budget's candidates measured on the target
    runs/<name>/models/<label>/    export bundles (see deploy.bundle)
    runs/<name>/validation.json    measured latency and accuracy per subnet
    runs/<name>/report.json, report.md, pareto.png

Modules: :mod:`~ofa.pipeline.config` (:class:`RunConfig`), :mod:`~ofa.pipeline.tables`
(the table step), :mod:`~ofa.pipeline.steps` (the steps and the loop),
:mod:`~ofa.pipeline.report` (report and plot). Above ``deploy`` in the layers
(``docs/architecture.md``), below the CLI: ``bench/`` scripts use it, never ``ofa.cli``.
"""

from ofa.pipeline.config import (
    RANK_TAU,
    DeploySettings,
    PredictorSettings,
    RunConfig,
    SearchSettings,
    TableSettings,
    default_samples,
)
from ofa.pipeline.report import summary_lines
from ofa.pipeline.steps import STEPS, State, Step, run_pipeline
from ofa.pipeline.tables import auto_budgets, find_shipped_table

__all__ = ["RunConfig", "PredictorSettings", "TableSettings", "SearchSettings",
           "DeploySettings", "RANK_TAU", "default_samples", "summary_lines", "STEPS", "State",
           "Step", "run_pipeline", "auto_budgets", "find_shipped_table"]
