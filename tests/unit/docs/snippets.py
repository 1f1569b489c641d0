"""The runnable parts of a Markdown page, so that tests run the docs' own text.

A page marks what is runnable with an HTML comment on the line before a fenced block:

* ``<!-- file: PATH -->`` before a block: the block is the content of ``PATH`` (relative to a sandbox
  folder).  A later block for the same path replaces it: the page grows a file step by step.
* ``<!-- run -->`` before a ``text`` block: ``$ cnlab ARGS`` lines, each followed by exactly what the
  command prints (stdout, then stderr); a line ``...`` stands for any number of lines.  A command
  whose output starts with ``cnlab: error:`` must exit with status 2, any other with 0.
* ``<!-- run: TAG -->``: the same, but only run by a test that sets up ``TAG`` (for example a package
  installed first); :func:`steps` leaves such blocks to that test.
* ``<!-- excerpt: PATH -->`` before a block: the block appears word for word in ``PATH`` (relative to
  the repository), so code the page quotes cannot drift from the code it quotes.

* ``<!-- new folder -->`` on its own: the files and commands after it use a new, empty folder (so a
  lab config written earlier on the page no longer applies).

A marker and its block may be indented alike (inside a list item); the indentation is removed.

And tables whose header row is :data:`BAD_INPUT_HEADER`: each row is a scenario file (its lines as
code spans joined by ``<br>``) and the one line ``cnlab check bad.toml`` prints for it.

Files and commands are applied in page order (:func:`steps`), so a command sees the files as the page
shows them at that point.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Step", "steps", "bad_input_rows", "output_matches", "run_steps", "BAD_INPUT_HEADER", "table_after",
           "codes", "first_codes", "contract_keys", "GUEST_CONTRACT"]

GUEST_CONTRACT = Path(__file__).resolve().parents[3] / "docs" / "guest-contract.md"

MARKED_BLOCK = re.compile(r"^(?P<indent> *)<!-- (?P<kind>file|run|excerpt)(?::\s*(?P<arg>[^ ]+))? -->\n"
                          r"(?P=indent)(?P<fence>```+)(?P<lang>[a-z]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)$",
                          re.M | re.S)
NEW_FOLDER = re.compile(r"^<!-- new folder -->$", re.M)
BAD_INPUT_HEADER = "| `bad.toml` | `cnlab check bad.toml` prints |"
WILDCARD = "..."


@dataclass(frozen=True)
class Step:
    """One runnable part: a file to write, or a command and what it prints.

    :param kind: ``file``, ``excerpt``, ``command`` or ``folder`` (a new, empty folder from here on).
    :param path: the file's path (``file``, ``excerpt``).
    :param text: the file's content or the quoted code, or the expected output (``command``).
    :param argv: the command's arguments after ``cnlab`` (``command``).
    :param tag: the ``run: TAG`` of the block, or "".
    :param line: where the block starts in the page (1-based), for messages.
    """

    kind: str
    path: str = ""
    text: str = ""
    argv: tuple[str, ...] = ()
    tag: str = ""
    line: int = 0


def _commands(body: str, tag: str, line: int) -> Iterator[Step]:
    argv: list[str] | None = None
    out: list[str] = []
    for text in body.splitlines():
        if text.startswith("$ "):
            if argv is not None:
                yield Step("command", text="\n".join(out), argv=tuple(argv), tag=tag, line=line)
            words = shlex.split(text[2:])
            assert words[0] == "cnlab", f"line {line}: only cnlab commands run: {text!r}"
            argv, out = words[1:], []
        else:
            assert argv is not None, f"line {line}: output before any '$ cnlab' line"
            out.append(text)
    if argv is not None:
        yield Step("command", text="\n".join(out), argv=tuple(argv), tag=tag, line=line)


def steps(page: str, tag: str = "") -> list[Step]:
    """Every file and command of ``page`` in page order; commands of blocks tagged other than ``tag`` left out."""
    out: list[tuple[int, Step]] = []
    for m in NEW_FOLDER.finditer(page):
        out.append((m.start(), Step("folder", line=page.count("\n", 0, m.start()) + 1)))
    for m in MARKED_BLOCK.finditer(page):
        line = page.count("\n", 0, m.start()) + 1
        indent = len(m["indent"])
        body = "".join(text[indent:] if text.strip() else text.lstrip(" ") for text in m["body"].splitlines(True))
        if m["kind"] in ("file", "excerpt"):
            out.append((m.start(), Step(m["kind"], path=m["arg"], text=body, line=line)))
        elif (m["arg"] or "") == tag:
            out.extend((m.start(), step) for step in _commands(body, m["arg"] or "", line))
    return [step for _, step in sorted(out, key=lambda pair: pair[0])]


def bad_input_rows(page: str) -> list[tuple[str, str, int]]:
    """``(scenario file text, printed line, page line)`` for every row of every bad-input table."""
    rows = []
    lines = page.splitlines()
    inside = False
    for number, text in enumerate(lines, start=1):
        if text.strip() == BAD_INPUT_HEADER:
            inside = True
            continue
        if not inside:
            continue
        if not text.startswith("|"):
            inside = False
            continue
        cells = [c.strip() for c in text.strip().strip("|").split("|")]
        if set(cells[0]) <= {"-", ":", " "}:
            continue
        assert len(cells) == 2, f"line {number}: a bad-input row has two cells: {text!r}"
        toml = "\n".join(part.strip().strip("`") for part in cells[0].split("<br>"))
        rows.append((toml + "\n", cells[1].strip("`"), number))
    return rows


def output_matches(expected: str, actual: str) -> bool:
    """``actual`` equals ``expected`` line by line, a ``...`` line matching any number of lines."""
    want, got = expected.splitlines(), actual.rstrip("\n").splitlines()

    def match(i: int, j: int) -> bool:
        if i == len(want):
            return j == len(got)
        if want[i] == WILDCARD:
            return any(match(i + 1, k) for k in range(j, len(got) + 1))
        return j < len(got) and want[i] == got[j] and match(i + 1, j + 1)

    return match(0, 0)


def run_steps(page_steps: list[Step], sandbox: Path,
              cnlab: Callable[[list[str], Path], tuple[int, str]], tag: str = "") -> int:
    """Write the files and run the commands of ``page_steps`` in ``sandbox``; returns how many commands ran.

    :param cnlab: ``cnlab(argv, folder)`` runs ``cnlab ARGV`` in ``folder``, returns
        ``(exit status, stdout + stderr)``.
    :raises AssertionError: a command printed something else than the page says, or exited otherwise.
    """
    ran = 0
    folder = sandbox
    for step in page_steps:
        if step.kind == "excerpt":
            continue
        if step.kind == "folder":
            folder = sandbox / f"folder-{step.line}"
            folder.mkdir()
            continue
        if step.kind == "file":
            path = folder / step.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(step.text)
            continue
        if step.tag != tag:
            continue
        status, printed = cnlab(list(step.argv), folder)
        command = "cnlab " + shlex.join(step.argv)
        assert output_matches(step.text, printed), (
            f"line {step.line}: `{command}` printed:\n{printed}\n--- the page says:\n{step.text}")
        error = step.text.startswith("cnlab: error:")
        assert status == (2 if error else 0), f"line {step.line}: `{command}` exited {status}:\n{printed}"
        ran += 1
    return ran


# ------------------------------------------------------------------ tables
def table_after(page: str, marker: str) -> list[list[str]]:
    """The rows (cells) of the first table after the line that contains ``marker``."""
    lines = page[page.index(marker):].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def codes(cell: str) -> set[str]:
    """The code spans of a table cell."""
    return set(re.findall(r"`([^`]+)`", cell))


def first_codes(rows: list[list[str]]) -> set[str]:
    """The code spans of the rows' first cells."""
    return {k for row in rows for k in codes(row[0])}


def contract_keys(page: str | None = None) -> dict[str, set[str]]:
    """The keys docs/guest-contract.md documents, by table."""
    page = page if page is not None else GUEST_CONTRACT.read_text()
    checker = table_after(page, "Every key the built-in checker (`consume.py`) writes:")
    by_key = {re.fullmatch(r"`([^`]+)`", r[0])[1]: r[1] for r in checker}
    required = first_codes(table_after(page, "Keys the engine needs"))
    return {
        "required": {k for k in required if "[" not in k},
        "required_in_streams": {k.rpartition(".")[2] for k in required if k.startswith("streams[k].")},
        "optional": first_codes(table_after(page, "Keys the engine reads when present")),
        "checker": set(by_key),
        "streams": codes(by_key["streams"]),
        "latency_us": codes(by_key["latency_us"]),
        "accounting": {k for row in table_after(page, "**What the agent adds: `accounting`.**")
                       for k in codes(row[0])},
        "agent": first_codes(table_after(page, "## 9. What the agent reports")),
    }
