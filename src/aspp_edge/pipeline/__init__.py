"""The orchestrators: `run` (train -> quantize -> export -> evaluate -> report) and `sweep`
(deploy-size latency), built from the same parts.

    common.py    the choice-list grammar, the out dir with its stage book and log, the peaks stage
    accuracy.py  the accuracy stages of one model (float, reference, int8 programs, export, eval)
    latency.py   the latency stages of one model at deploy size (quantize, export, time), and the
                 run's `deploy:` section built from them
    run.py       `aspp-edge run`
    sweep.py     `aspp-edge sweep`
"""

from .accuracy import mixed_settings
from .common import ALL, parse_choices
from .run import LOG_FILE, RunSummary, apps_artifacts, plan_models, run
from .sweep import SweepConfig, SweepResult, sweep

__all__ = ["ALL", "LOG_FILE", "RunSummary", "SweepConfig", "SweepResult", "apps_artifacts", "mixed_settings", "parse_choices",
           "plan_models", "run", "sweep"]
