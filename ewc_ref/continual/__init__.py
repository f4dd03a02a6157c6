"""The continual-learning part; ``experiments`` holds the methods, scenarios and runs of ``ewc-ref demo``."""
