"""`ceds demo`: phantoms -> CEDS training with a fixed recipe -> ONNX export -> `ceds segment` ->
`ceds evaluate`, in one folder, with a quality gate and a page to look at (`run` the stages,
`page` the terminal summary and index.html). Part of the application layer, like `cli`."""

from ceds_deploy.demo.run import (
                                  DEMO_RECIPE,
                                  MIN_MEAN_DICE,
                                  TESTED_RECIPE,
                                  DemoSettings,
                                  TrainingClock,
                                  Verdict,
                                  demo_console,
                                  run_demo,
)

__all__ = ["DEMO_RECIPE", "MIN_MEAN_DICE", "TESTED_RECIPE", "DemoSettings", "TrainingClock", "Verdict",
           "demo_console", "run_demo"]
