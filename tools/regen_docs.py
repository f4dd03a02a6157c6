"""Regenerate the transcripts of README.md and docs/*.md: run every page as tests/docs/test_docs.py does
and write each ``$ COMMAND`` block's output back, with a line naming the versions used.

    python tools/regen_docs.py                 # every page
    python tools/regen_docs.py docs/verify-a-pytorch-ewc.md
    python tools/regen_docs.py --check         # exit 1 and list the lines that would change

Run it from a checkout with the test environment (README, "Run the tests"); it imports the ewc_ref of
this checkout. Pages are written only when a transcript changed (numbers beyond the tolerance of
tools/docs_pages.py or any text); a failing python or shell block stops with its page and line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
import docs_pages  # noqa: E402  (the engine beside this script; this checkout's ewc_ref, not an installed one)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", type=Path, help="pages to regenerate (default: README.md and docs/*.md)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page would change")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.pages] or docs_pages.pages()
    changed = 0
    for path in paths:
        page = docs_pages.parse(path)
        if not any(b.kind == "transcript" and b.not_run is None for b in page.blocks) and not args.check:
            print(f"{page.name}: no transcripts")
            continue
        with tempfile.TemporaryDirectory(prefix="ewc_ref_docs_") as folder:
            produced = docs_pages.run_page(page, Path(folder) / "work")
        new_text = docs_pages.regenerate(page, produced)
        differences = docs_pages.lines_differ(page.text, new_text)
        if not differences and (new_text == page.text or args.check or docs_pages.VERSIONS_MARK in page.text):
            print(f"{page.name}: up to date")
            continue
        changed += 1
        if args.check:
            print(f"{page.name}: would change:\n" + "\n".join(differences))
        else:
            path.write_text(new_text, encoding="utf-8")
            print(f"{page.name}: rewrote {len(differences)} differing lines")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
