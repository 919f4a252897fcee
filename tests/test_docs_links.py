"""Every relative link in the user documentation points at a file or folder in the repository.

Covers README.md, docs/*.md and the model cards (samples/models/*/*.md): inline links and
image links `[text](target)` / `![alt](target)` and reference definitions `[label]: target`.
Web and mail links and pure `#anchors` are skipped; a `#fragment` is stripped before the
target is looked up, relative to the file that holds the link. Text in code blocks and code
spans is not a link and is ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Result files that are not part of the documented record (superseded runs, experiment scripts).
NOT_LINKED = [
    re.compile(r"^bench/results/.*-old\.[^/]+$"),
    re.compile(r"^bench/results/.*-ed4f5f4\.[^/]+$"),
    re.compile(r"^bench/results/.*\.py$"),
]

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) or ![alt](target); target optionally in <...>, optionally followed by a title.
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(][^)]*)?\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_SKIP = re.compile(r"^(https?:|mailto:|#)", re.IGNORECASE)


def doc_files() -> list[Path]:
    files = [ROOT / "README.md"]
    files += sorted((ROOT / "docs").glob("*.md"))
    files += sorted((ROOT / "samples" / "models").glob("*/*.md"))
    return [f for f in files if f.is_file()]


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link outside code blocks and code spans."""
    found = []
    in_fence = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        line = _CODE_SPAN.sub("", line)
        targets = [m.group(1) for m in _INLINE.finditer(line)]
        ref = _REFERENCE.match(line)
        if ref:
            targets.append(ref.group(1))
        for target in targets:
            found.append((number, target.strip("<>")))
    return found


def broken_links(path: Path) -> list[str]:
    problems = []
    for number, target in links(path.read_text(encoding="utf-8")):
        if _SKIP.match(target):
            continue
        relative = target.split("#", 1)[0].split("?", 1)[0]
        if not relative:
            continue
        resolved = (path.parent / relative).resolve()
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        try:
            in_repo = resolved.relative_to(ROOT).as_posix()
        except ValueError:
            problems.append(f"{where} (outside the repository)")
            continue
        if not resolved.exists():
            problems.append(f"{where} (no such file)")
        elif any(p.match(in_repo) for p in NOT_LINKED):
            problems.append(f"{where} (a superseded result or an experiment script)")
    return problems


def test_there_are_documents_with_links():
    files = doc_files()
    assert ROOT / "README.md" in files
    assert sum(len(links(f.read_text(encoding="utf-8"))) for f in files) > 20


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](page.md) [anchor](#x) [web](https://example.org/a.md) ![gone](missing.png)\n"
        "```\n[in code](also-missing.md)\n```\n`[span](missing-too.md)`\n[ref]: gone.md#part\n",
        encoding="utf-8",
    )
    found = [target for _, target in links(page.read_text(encoding="utf-8"))]
    assert found == ["page.md", "#x", "https://example.org/a.md", "missing.png", "gone.md#part"]
