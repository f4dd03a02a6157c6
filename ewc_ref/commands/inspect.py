"""Print a model's architecture, parameter count, likelihood and, with DATA, its mean loss and accuracy."""

from __future__ import annotations

from ..io import load_data, load_model


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model.npz (EXCHANGE.md)")
    parser.add_argument("data", metavar="DATA", nargs="?", help="data.npz (optional)")


def run(args) -> int:
    model, lik = load_model(args.model)
    print(f"model        {args.model}")
    print(f"layers       {' -> '.join(map(str, model.layer_sizes))}")
    for name, shape in zip(model.param_names, model.param_shapes, strict=True):
        print(f"  {name:<12} {shape}")
    print(f"activation   {model.activation.name}")
    print(f"likelihood   {lik!r}")
    print(f"parameters   P = {model.n_params}")
    print(f"dtype        {model.dtype}")
    if args.data is not None:
        x, y = load_data(args.data, model, lik)
        f = model.forward(x)[0]
        print(f"data         {args.data}: N = {x.shape[0]}")
        print(f"mean loss    {lik.nll(f, y).mean():.10g}  (mean negative log-likelihood per example)")
        accuracy = lik.accuracy(f, y)
        if accuracy is not None:
            print(f"accuracy     {accuracy:.4f}")
    return 0
