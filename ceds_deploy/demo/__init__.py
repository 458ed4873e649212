"""`ceds demo`: phantoms -> CEDS training with a fixed recipe -> ONNX export -> `ceds segment` ->
`ceds evaluate`, in one folder, with a quality gate and a page to look at: `recipe` (the fixed
training recipe and the gate's thresholds), `run` (the stages), `verdict` (the quality gate),
`page` (the terminal summary and index.html). Part of the application layer, like `cli`."""

from ceds_deploy.demo.recipe import DEMO_RECIPE, MIN_MEAN_DICE, TESTED_RECIPE, DemoSettings
from ceds_deploy.demo.run import TrainingClock, demo_console, run_demo
from ceds_deploy.demo.verdict import Verdict, judge

__all__ = [
    "DEMO_RECIPE",
    "MIN_MEAN_DICE",
    "TESTED_RECIPE",
    "DemoSettings",
    "TrainingClock",
    "Verdict",
    "demo_console",
    "judge",
    "run_demo",
]
