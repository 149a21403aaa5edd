"""Mixed precision: per-layer sensitivity (`bench sensitivity`) and exact bit allocation (ILP over the cost model).

Above the quantization core and the methods (it calibrates with a method by name), below the runner.
"""
