"""One meaning per equation number: "eq. (N)", "equation (N)", "Eq. N" mean the report's equation N.

The report (A. Aich, "EWC: Nuts and Bolts", arXiv:2105.04093) numbers its equations (1)-(11); derivations/
quotes them. An equation numbered locally (a module's own decomposition or recursion) is labelled (L1),
(L2), ... so that a bare number never means two things. Three checks:

* every explicit reference, in the package, docs/, README.md and derivations/, names a number in 1..11;
* no module labels a displayed equation of its own with a bare number ("...   (2)" at the end of a line);
* the quantity next to a reference is the report's: REPORT_WORDS[N] (words taken from the report's
  equation N and the sentences around it) occurs within WINDOW characters of every single-number reference
  in ewc_ref/, and of the references in a sample of the pages (PAGE_SAMPLE).

The verify/ modules label their own equations by module: (D1) diagnosis, (S2)-(S4) statistics,
(U1)-(U5) shuffled, (K1)-(K2) kfac, (O1) loader, (R1)-(R2) ranking, (F1) factors, (B1) band.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ewc_ref"

#: An explicit reference and the numbers it names: "eq 8", "eq. (11)", "eqs. (5)-(8)", "equations (1)-(11)",
#: "Eq. 4", "eqs. 10–11", "eqs. (1), (2) and (4)", "eq 2'".
REFERENCE = re.compile(r"\b(eqs?|equations?)\b\.?\s*(\(?\d+'?\)?(?:\s*(?:-|–|,|and|to)\s*\(?\d+'?\)?)*)", re.I)
#: A displayed equation labelled by the report's number at the start of its line: "    (4)  log p(theta | A, B) = ...".
LINE_START_LABEL = re.compile(r"^[ \t]+(\((\d{1,2})\)(?:-\((\d{1,2})\))?)[ \t]{2,}\S", re.M)
#: A displayed equation labelled with a bare number at the end of its line (a local numbering).
LINE_END_LABEL = re.compile(r"\S\s{2,}\((\d{1,2})'?\)\s*$", re.M)

#: What the report's equation N is about: one of these words occurs next to every reference to it.
REPORT_WORDS = {
    1: r"Bayes|evidence|denominator|p\(D\)",
    2: r"log ?posterior|log p\(D|log p\(\\mathcal|log-likelihood|Bayes",
    3: r"maxim|argmax|MAP",
    4: r"task|prior|p\(theta \| A\)|sequential",
    5: r"Taylor",
    6: r"Taylor|gradient|first-order|Hessian",
    7: r"Laplace|log p\(theta \| A\)|Gaussian",
    8: r"Laplace|Gaussian|precision|N\(",
    9: r"Fisher|estimator|expect",
    10: r"Hessian|log posterior|second derivative",
    11: r"lambda|λ|penalty|regulari|loss",
}
WINDOW = 160
#: ... and none of these: (10) still has the Hessian; the Fisher form -lambda/2 F is (11) (ERRATA E9).
NOT_REPORT_WORDS = {10: r"Fisher|F_i\b|\\mathbb ?I"}

#: Pages whose references are checked for their meaning (all of the package's are).
PAGE_SAMPLE = ["README.md", "docs/continual-learning.md", "docs/bayes-and-laplace.md", "docs/penalty-conventions.md",
               "derivations/01_bayes_rule.md", "derivations/04_fisher.md", "derivations/05_ewc_objective.md"]

def _references(text: str):
    """[(line, numbers, start, end)] of every explicit reference and line-start label in text."""
    out = []
    for match in REFERENCE.finditer(text):
        numbers = [int(n) for n in re.findall(r"\d+", match.group(2))]
        out.append((text.count("\n", 0, match.start()) + 1, numbers, match.start(), match.end()))
    for match in LINE_START_LABEL.finditer(text):
        numbers = [int(n) for n in re.findall(r"\d+", match.group(1))]
        out.append((text.count("\n", 0, match.start()) + 1, numbers, match.start(1), match.end(1)))
    return sorted(out)


def _parts() -> list:
    """The package's parts: each subpackage, and the top-level modules as one part."""
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    return folders + ["(top level)"]


def _files(part: str) -> list[Path]:
    return sorted(PACKAGE.glob("*.py")) if part == "(top level)" else sorted((PACKAGE / part).rglob("*.py"))


def _pages() -> list[Path]:
    return ([ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "derivations").glob("*.md")))


@pytest.mark.parametrize("part", _parts())
def test_package_references_name_report_equations(part):
    wrong = [f"{path.relative_to(ROOT)}:{line} names {numbers}"
             for path in _files(part) for line, numbers, _, _ in _references(path.read_text())
             if any(not 1 <= n <= 11 for n in numbers)]
    assert wrong == []


def test_page_references_name_report_equations():
    wrong = [f"{path.relative_to(ROOT)}:{line} names {numbers}"
             for path in _pages() for line, numbers, _, _ in _references(path.read_text())
             if any(not 1 <= n <= 11 for n in numbers)]
    assert wrong == []


@pytest.mark.parametrize("part", _parts())
def test_local_equations_are_not_numbered_like_the_report(part):
    labels = [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1} ({m.group(1)})"
              for path in _files(part) for text in [path.read_text()] for m in LINE_END_LABEL.finditer(text)]
    assert labels == [], "label a module's own equations (L1), (L2), ...; (N) is the report's equation N"


def _misplaced(path: Path, root: Path = ROOT) -> list[str]:
    """Single-number references in path without the report's words for that equation nearby."""
    text = path.read_text()
    out = []
    for line, numbers, start, end in _references(text):
        if len(numbers) != 1 or not 1 <= numbers[0] <= 11:
            continue  # ranges ("eqs. 5-8") name a passage, not one quantity; out-of-range is tested above
        near = text[max(0, start - WINDOW):end + WINDOW]
        wrong = NOT_REPORT_WORDS.get(numbers[0])
        if not re.search(REPORT_WORDS[numbers[0]], near, re.I) or (wrong and re.search(wrong, near)):
            out.append(f"{path.relative_to(root)}:{line} eq. ({numbers[0]}): {text[start:end + 60]!r}")
    return out


@pytest.mark.parametrize("part", _parts())
def test_package_references_mean_the_report_quantity(part):
    assert [m for path in _files(part) for m in _misplaced(path)] == []


@pytest.mark.parametrize("page", PAGE_SAMPLE)
def test_page_references_mean_the_report_quantity(page):
    assert _references((ROOT / page).read_text()), f"{page} no longer refers to the report's equations: resample"
    assert _misplaced(ROOT / page) == []


@pytest.mark.parametrize(("text", "numbers", "misplaced"), [
    # penalty.py before issue 27: the Fisher form attributed to (10)
    ("The report's eq. 10 writes the log posterior log p(theta | D_A, D_B) = log p(D_B | theta) -\n"
     "lambda/2 sum_i F_i (theta_i - theta*_A,i)^2 + const, which is *maximised*", [10], True),
    ("The report's eq. (11), second line: log p(D_B | theta) - lambda/2 sum_i F_i d_i^2", [11], False),
    ("(3)  log p(D | theta) = sum_n log p(y_n | f(x_n; theta)), a SUM, not a mean, eq (3).", [3], True),
    ("the exact mean and covariance of a one-sample mc estimate's entries (i_e, j_e), eq (2).", [2], True),
    ("Laplace approximation, eqs. (5)-(8), and eq. (12) of another paper", [5, 8, 12], False),
    ("eq4_check and the scheme eq N1", [], False),
    # posterior.py before issue 27: the log-likelihood labelled as the report's (3)
    ("    (3)  log p(D | theta) = sum_n log p(y_n | f(x_n; theta)) = -sum_n l_n(theta)\n", [3], True),
    ("    (4)  log p(theta | A, B) = log p(B | theta) + log p(theta | A) - log p(B | A)\n", [4], False),
])
def test_the_scan_finds_what_it_should(tmp_path, text, numbers, misplaced):
    # The checks above can fail: a reference out of range, one next to another quantity, a local label.
    assert [n for _, found, _, _ in _references(text) for n in found] == numbers
    page = tmp_path / "page.md"
    page.write_text(text)
    assert bool(_misplaced(page, tmp_path)) == misplaced
    assert LINE_END_LABEL.search("    H = GGN + residual            (1)\n")
    assert not LINE_END_LABEL.search("    H = GGN + residual            (L1)\n")
    assert not LINE_END_LABEL.search("        head = stream.read(4)\n")
