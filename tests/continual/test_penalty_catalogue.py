"""The catalogue of published EWC penalties (tests/fixtures/penalties), named by ``ewc-ref diagnose-penalty``.

The fixtures were written in torch from each code's own formulas (make_penalties.py, no ewc_ref
import); catalogue.json says what each formula IS in the report's terms. Every entry must be named
exactly so through the command line: the combination, the Fisher (estimator and B), gamma and the
factor lambda_paper / lambda. The conventions table of docs/penalty-conventions.md is generated
from these verdicts (``conventions_table``); the page must hold exactly that table. Regenerate it
with ``python tests/continual/test_penalty_catalogue.py --write`` (from the repository root, PYTHONPATH=.).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if __name__ == "__main__":  # run as a script (--write): tests/ on the path, as pytest's `pythonpath` puts it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.penalty_catalogue import CATALOGUE, END, PAGE, ROOT, START, verdict  # noqa: E402


@pytest.mark.parametrize("name", sorted(CATALOGUE["entries"]))
def test_every_entry_is_named_as_its_formula_says(name, capsys):
    meta = CATALOGUE["entries"][name]
    result = verdict(name, capsys)
    assert result["combination"] == meta["combination"], result["causes"]
    assert result["penalty_fit"]["quadratic"] == meta.get("quadratic", "diagonal quadratic")
    if meta["combination"] == "none":
        assert result["curvature"] is None and result["causes"]
        return
    curvature = result["curvature"]
    assert (curvature["estimator"], curvature["batch_size"]) == (meta["estimator"], meta["batch_size"])
    assert result["factor_expression"] == meta["factor"], result["factor_words"]
    if "gamma" in meta:
        expected = {"gamma": CATALOGUE["gamma"], "gamma^2": CATALOGUE["gamma"] ** 2}[meta["gamma"]]
        assert result["gamma_fitted"] == pytest.approx(expected, rel=1e-10)
    else:
        assert curvature["row"] in ("sum", "latest only", "at theta")
    if curvature["row"] == "at theta":  # no W to diagnose: the curvature changes from point to point
        return
    # diagnose on each task's term of W agrees with the combined fit
    assert {(d["estimator"], d["batch_size"]) for d in result["per_task"]} == {(meta["estimator"], meta["batch_size"])}


def conventions_table(results: dict) -> str:
    """The Markdown table of the page: one row per catalogue entry, from the verdicts `results`."""
    n, gamma = CATALOGUE["n"], CATALOGUE["gamma"]
    lines = ["| code | its penalty | diagnose-penalty names it | Fisher | lambda_paper / lambda | "
             f"value (N = {n}, gamma = {gamma:g}, P = {{p}}) |", "|---|---|---|---|---|---|"]
    p = None
    for name, meta in CATALOGUE["entries"].items():
        result = results[name]
        p = result["n_params"]
        formula = meta["formula"].replace("|", "\\|")  # a table cell: GFM needs the pipe escaped, even in code
        if result["combination"] == "none":
            named = f"none: {result['penalty_fit']['quadratic']}"
            lines.append(f"| {meta['source']} | `{formula}` | {named} | - | - | - |")
            continue
        c = result["curvature"]
        fisher = c["estimator"] + (f", B = {c['batch_size']}" if c["batch_size"] else "")
        combination = result["combination"] + (f", gamma = {c['gamma']:.6g}" if c["gamma"] is not None else "")
        lines.append(f"| {meta['source']} | `{formula}` | {combination} | {fisher} | "
                     f"{result['factor_expression'] or 'none'} | {result['factor']:.6g} |")
    lines[0] = lines[0].format(p=p)
    return "\n".join(lines)


def page_table() -> str:
    text = PAGE.read_text()
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def test_the_page_holds_the_table_the_catalogue_produces():
    results = {name: verdict(name) for name in CATALOGUE["entries"]}
    assert page_table() == conventions_table(results), "regenerate: python tests/continual/test_penalty_catalogue.py --write"


def test_the_page_python_block_runs(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("derivations_conftest", ROOT / "derivations" / "conftest.py")
    collector = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collector)
    monkeypatch.chdir(ROOT)
    blocks = collector.extract_python_blocks(PAGE.read_text())
    assert blocks
    namespace = {"__name__": "penalty_conventions"}
    for _, code in blocks:
        exec(compile(code, str(PAGE), "exec"), namespace)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    table = conventions_table({name: verdict(name) for name in CATALOGUE["entries"]})
    text = PAGE.read_text()
    head, rest = text.split(START, 1)
    PAGE.write_text(head + START + "\n" + table + "\n" + END + rest.split(END, 1)[1])
    print(table)
