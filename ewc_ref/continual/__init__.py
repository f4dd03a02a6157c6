"""The continual-learning part: the EWC penalty, training on task sequences, multi-head views, data, metrics.

Owns the quadratic penalty and its merging (``penalty``), naming a foreign penalty (``penalty_names``,
``penalty_report``, ``penalty_screen``, ``penalty_causes``: anchor, Fisher, combination, lambda factor), SGD on one task and on a sequence
and the head views of a multi-head network (``training``: head_view, head_fisher), the task datasets and scenarios
(``datasets``), the continual-learning metrics (``metrics``) and the experiment of ``ewc-ref demo``
(``experiments``: methods, scenarios, default lambdas, the sweep grid, run_sequence, run_scenario, sweep). Imports model, curvature and verify.
"""
