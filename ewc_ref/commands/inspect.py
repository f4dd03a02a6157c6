"""Print a model's architecture, parameter count, likelihood and, with DATA, its mean loss and accuracy."""

from __future__ import annotations

from ..io import load_data, load_model
from ._args import add_json, add_quiet, add_report_output, report_to, write_json

#: the arguments that name files this command reads (ewc_ref/cli.py refuses them as -o)


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model.npz (docs/file-format.md)")
    parser.add_argument("data", metavar="DATA", nargs="?", help="data.npz (optional)")
    add_report_output(parser)
    add_json(parser, "the same facts (docs/file-format.md)")
    add_quiet(parser)


def describe(model, lik, model_path, data_path=None, x=None, y=None) -> dict:
    """The facts `inspect` prints, as the JSON object of docs/file-format.md."""
    facts = {
        "model": str(model_path), "layers": [int(s) for s in model.layer_sizes],
        "parameters": {name: list(shape) for name, shape in zip(model.param_names, model.param_shapes, strict=True)},
        "activation": model.activation.name, "likelihood": lik.name,
        "sigma": float(lik.sigma) if hasattr(lik, "sigma") else None,
        "n_params": int(model.n_params), "dtype": str(model.dtype),
        "data": None, "n": None, "mean_loss": None, "accuracy": None,
    }
    if x is not None:
        f = model.forward(x)[0]
        accuracy = lik.accuracy(f, y)
        facts.update(data=str(data_path), n=int(x.shape[0]), mean_loss=float(lik.nll(f, y).mean()),
                     accuracy=None if accuracy is None else float(accuracy))
    return facts


def run(args) -> int:
    model, lik = load_model(args.model)
    x = y = None
    if args.data is not None:
        x, y = load_data(args.data, model, lik)
    facts = describe(model, lik, args.model, args.data, x, y)
    with report_to(args.output):
        _print(args, model, lik, facts)
    return 0


def _print(args, model, lik, facts) -> None:
    if args.json:
        write_json(facts)
        return
    print(f"model        {args.model}")
    print(f"layers       {' -> '.join(map(str, model.layer_sizes))}")
    for name, shape in zip(model.param_names, model.param_shapes, strict=True):
        print(f"  {name:<12} {shape}")
    print(f"activation   {model.activation.name}")
    print(f"likelihood   {lik!r}")
    print(f"parameters   P = {model.n_params}")
    print(f"dtype        {model.dtype}")
    if facts["n"] is not None:
        print(f"data         {args.data}: N = {facts['n']}")
        print(f"mean loss    {facts['mean_loss']:.10g}  (mean negative log-likelihood per example)")
        if facts["accuracy"] is not None:
            print(f"accuracy     {facts['accuracy']:.4f}")
