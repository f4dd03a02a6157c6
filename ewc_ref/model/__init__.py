"""The model part: activations, cs231n-style layer pairs, the MLP, likelihoods and the loss.

Everything else in ewc_ref is built on these modules; they import nothing from the other parts.
Owns: activation table (``activations``), forward/backward pairs with caches (``layers``), the
network and its parameter layout (``mlp``), likelihood rules per output (``likelihoods``) and the
mean loss, its gradient and per-example gradients (``loss``).
"""
