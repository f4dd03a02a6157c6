"""The continual-learning part: the EWC penalty, training on task sequences, multi-head views, data, metrics.

Owns the quadratic penalty and its merging (``penalty``), SGD on one task and on a sequence
(``training``), the head views of a multi-head network (``heads``), the task datasets and scenarios
(``datasets``) and the continual-learning metrics (``metrics``). Imports model and curvature.
"""
