"""The curvature part: Fisher, GGN and Hessian of an MLP, their estimators, structures and file format.

Owns the result type and its npz format, the estimator and structure tables, the streaming
accumulator and the entry point ``fisher``, the batched estimator, the R-operator (Hessian- and
GGN-vector products, ``second_order``), the array kernels (``kernels``, arrays in, arrays out) and
the naive per-example twins every fast path is tested against (``naive``). Imports the model part only.
"""
