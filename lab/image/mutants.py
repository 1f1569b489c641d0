"""Source-level mutants of the lab module (``kmod/*.c``) and the object-code filter.

A small C lexer finds mutation sites in code only: comments, string and character literals and preprocessor
lines (with their continuations) are never mutated.  Each operator rewrites one site:

==========  ==========================================================================================
operator    what it does
==========  ==========================================================================================
boundary    ``<`` <-> ``<=``, ``>`` <-> ``>=``
negate      ``==`` <-> ``!=``, ``<`` <-> ``>=``, ``>`` <-> ``<=``
lock        deletes a lock or unlock statement (``spin_*lock*``, ``mutex_*``, ``local_irq_*``,
            ``preempt_*``, ``rcu``/``srcu`` read sections, ``cpus_read_*``)
counter     deletes a counter update: ``x++;``, ``x--;``, ``x += n;``, ``x -= n;``, ``cbus_add()``,
            ``atomic*_inc/dec/add/sub()``, ``this_cpu_inc/add()``
sync        deletes a wait: ``synchronize_*()``, ``flush_*()``, ``cancel_*()``, ``del_timer_sync()``,
            ``hrtimer_cancel()``, ``tasklet_kill()``, ``kthread_stop()``
barrier     deletes ``smp_mb()``, ``smp_rmb()``, ``smp_wmb()``, ``smp_mb__*()``
wake        deletes ``wake_up*()``
free        deletes ``kfree()``, ``kvfree()``, ``vfree()``, ``free_percpu()``, ``*_free*()``,
            ``sock_release()``, ``sock_put()``, ``cleanup_srcu_struct()``, ``debugfs_remove*()``
once        ``WRITE_ONCE(a, b);`` -> ``a = b;``, ``READ_ONCE(x)`` -> ``(x)``
constant    an integer literal +1, and -1 when it is not 0 (base and suffix kept)
return      ``return 0;`` -> ``return -EINVAL;``, ``return -E...;`` -> ``return 0;``
==========  ==========================================================================================

Nothing inside a tracepoint call (``trace_*(...)``, ``kmod/cnlab_trace.h``) is mutated: its arguments change only
what the flight recorder writes, never what the module does, so such mutants could only survive.

A deleted statement leaves its newlines behind, so no line of the file moves (``__LINE__`` in ``WARN_ON()``
and friends stays the same).  A mutant's id is ``FILE:LINE:OPERATOR:HASH``, the hash taken over the file, the
operator and the text of the changed lines before and after: it does not depend on the order of generation
or on the selection.

:func:`object_code_differs` compares two built modules (or any two ELF objects) section by section: the
allocated sections' bytes and their relocations (by symbol name), ignoring build ids, ``.modinfo`` (it holds
``srcversion``, a hash of the source), BTF, debug info and the build folder's name in ``__FILE__`` strings.
"""

from __future__ import annotations

import difflib
import hashlib
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OPERATORS", "EQUIVALENTS_FILE", "load_equivalents", "Mutant", "Token", "tokenize", "mutants_of_source",
           "generate_mutants",
           "select_mutants", "write_mutant_tree", "object_code_differs", "object_code_sections", "MUTANT_IGNORE"]

#: Every operator with a one-line description (``cnlab mutate --list-operators``, the docs).
OPERATORS: dict[str, str] = {
    "boundary": "relational boundary flip: < <-> <=, > <-> >=",
    "negate": "relational negation: == <-> !=, < <-> >=, > <-> <=",
    "lock": "delete a lock/unlock statement (spin/mutex/irq/preempt/rcu/srcu/cpus_read)",
    "counter": "delete a counter update (x++, x--, x += n, x -= n, cbus_add, atomic*/this_cpu inc/add)",
    "sync": "delete a wait (synchronize_*, flush_*, cancel_*, del_timer_sync, hrtimer_cancel, tasklet_kill, "
            "kthread_stop)",
    "barrier": "delete a memory barrier (smp_mb, smp_rmb, smp_wmb, smp_mb__*)",
    "wake": "delete a wake-up (wake_up*)",
    "free": "delete a free (kfree, kvfree, vfree, free_percpu, *_free*, sock_release, sock_put, "
            "cleanup_srcu_struct, debugfs_remove*)",
    "once": "WRITE_ONCE(a, b) -> a = b, READ_ONCE(x) -> (x)",
    "constant": "integer literal +1 / -1",
    "return": "return 0 <-> return -E...",
}

#: Copying kmod/ for a mutant leaves out build products and what the module build ignores.
MUTANT_IGNORE = ("*.o", "*.ko", ".*.cmd", "*.mod*", "Module.symvers", "modules.order", ".tmp*")

_CALLS: dict[str, re.Pattern[str]] = {
    "lock": re.compile(r"^(raw_)?spin_(try)?(un)?lock(_irq|_irqsave|_irqrestore|_bh)?$|^mutex_(un)?lock(_\w+)?$"
                       r"|^local_irq_(save|restore|disable|enable)$|^local_bh_(disable|enable)$"
                       r"|^preempt_(disable|enable)(_notrace)?$|^(s)?rcu_read_(un)?lock(_bh|_sched)?$"
                       r"|^cpus_read_(un)?lock$|^(read|write)_(un)?lock(_\w+)?$"),
    "counter": re.compile(r"^cbus_add$|^atomic(64|_long)?_(inc|dec|add|sub)$|^this_cpu_(inc|dec|add|sub)$"
                          r"|^u64_stats_(inc|add)$|^local(64)?_(inc|dec|add|sub)$"),
    "sync": re.compile(r"^synchronize_\w+$|^flush_\w+$|^cancel_\w+$|^del_timer_sync$|^timer_delete_sync$"
                       r"|^hrtimer_cancel$|^tasklet_kill$|^kthread_stop$|^rcu_barrier\w*$"),
    "barrier": re.compile(r"^smp_(mb|rmb|wmb)$|^smp_mb__\w+$"),
    "wake": re.compile(r"^wake_up\w*$"),
    "free": re.compile(r"^(kfree|kvfree|vfree|free_percpu|kfree_rcu|kvfree_rcu|sock_release|sock_put"
                       r"|cleanup_srcu_struct)$|^debugfs_remove\w*$|^\w+_free(_\w+)?$|^free_\w+$"),
}

_PUNCT = ("<<=", ">>=", "...", "->", "++", "--", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||", "+=", "-=",
          "*=", "/=", "%=", "&=", "^=", "|=", "##")
_BOUNDARY = {"<": "<=", "<=": "<", ">": ">=", ">=": ">"}
_NEGATE = {"==": "!=", "!=": "==", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}
_INT = re.compile(r"^(?:(0[xX])([0-9a-fA-F]+)|(0)([0-7]+)|([1-9][0-9]*|0))([uUlL]*)$")
_STATEMENT_START = {";", "{", "}", "else"}
_KEYWORDS = {"if", "else", "for", "while", "do", "switch", "return", "case", "default", "goto", "break",
             "continue", "sizeof"}
_ASSIGN = {"=", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "<<=", ">>="}


@dataclass(frozen=True)
class Token:
    """One lexeme: ``kind`` is ``ident``, ``number``, ``punct``, ``string``, ``char``, ``comment`` or ``pp``."""

    kind: str
    text: str
    start: int
    end: int


def tokenize(text: str) -> list[Token]:
    """Lex C source.  Comments, literals and preprocessor lines come out as single tokens of their own kind."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    line_start = True  # only whitespace since the last newline: a '#' here starts a preprocessor line
    while i < n:
        c = text[i]
        if c == "\n":
            line_start = True
            i += 1
            continue
        if c in " \t\r\f\v":
            i += 1
            continue
        if c == "\\" and text.startswith("\n", i + 1):
            i += 2
            continue
        start = i
        if c == "#" and line_start:
            while i < n and text[i] != "\n":
                if text.startswith("/*", i):  # a comment may hide the newline that ends the directive
                    close = text.find("*/", i + 2)
                    i = n if close < 0 else close + 2
                    continue
                i += 2 if text[i] == "\\" and i + 1 < n else 1
            tokens.append(Token("pp", text[start:i], start, i))
            continue
        line_start = False
        if text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 2 if text[i] == "\\" and i + 1 < n else 1
            tokens.append(Token("comment", text[start:i], start, i))
        elif text.startswith("/*", i):
            close = text.find("*/", i + 2)
            i = n if close < 0 else close + 2
            tokens.append(Token("comment", text[start:i], start, i))
        elif c in "\"'" or (c in "LuU" and i + 1 < n and text[i + 1] in "\"'"):
            if c not in "\"'":
                i += 1
            quote = text[i]
            i += 1
            while i < n and text[i] != quote and text[i] != "\n":
                i += 2 if text[i] == "\\" else 1
            i = min(i + 1, n)
            tokens.append(Token("string" if quote == '"' else "char", text[start:i], start, i))
        elif c.isalpha() or c == "_":
            while i < n and (text[i].isalnum() or text[i] == "_"):
                i += 1
            tokens.append(Token("ident", text[start:i], start, i))
        elif c.isdigit() or (c == "." and i + 1 < n and text[i + 1].isdigit()):
            i += 1
            while i < n and (text[i].isalnum() or text[i] in "._" or
                             (text[i] in "+-" and text[i - 1] in "eEpP" and not text[start:i].lower()
                              .startswith("0x"))):
                i += 1
            tokens.append(Token("number", text[start:i], start, i))
        else:
            for p in _PUNCT:
                if text.startswith(p, i):
                    i += len(p)
                    break
            else:
                i += 1
            tokens.append(Token("punct", text[start:i], start, i))
    return tokens


@dataclass(frozen=True)
class Mutant:
    """One change to one file of ``kmod/``: ``text[start:end]`` becomes ``replacement``."""

    file: str
    line: int
    operator: str
    start: int
    end: int
    original: str
    replacement: str
    description: str
    mutant_id: str
    diff: str

    def apply(self, text: str) -> str:
        """``text`` (the file's unmutated content) with this mutant applied."""
        if text[self.start:self.end] != self.original:
            raise ValueError(f"mutant {self.mutant_id} does not apply: the file changed since it was generated")
        return text[:self.start] + self.replacement + text[self.end:]

    def to_json(self) -> dict:
        return {"id": self.mutant_id, "file": self.file, "line": self.line, "operator": self.operator,
                "description": self.description, "diff": self.diff}


def _match_paren(code: list[Token], open_index: int) -> int:
    """Index of the ``)`` closing the ``(`` at ``open_index`` (-1 if unbalanced)."""
    depth = 0
    for j in range(open_index, len(code)):
        if code[j].text == "(":
            depth += 1
        elif code[j].text == ")":
            depth -= 1
            if depth == 0:
                return j
    return -1


def _statement_end(code: list[Token], first: int) -> int:
    """Index of the ``;`` ending the expression statement starting at ``first`` (-1 if there is none at depth 0)."""
    depth = 0
    for j in range(first, len(code)):
        t = code[j].text
        if t in "([":
            depth += 1
        elif t in ")]":
            depth -= 1
            if depth < 0:
                return -1
        elif t in "{}":
            return -1
        elif t == ";" and depth == 0:
            return j
    return -1


def _split_args(code: list[Token], open_index: int, close_index: int) -> list[tuple[int, int]]:
    """The argument token ranges ``(first, last)`` of a call whose parentheses are at the given indexes."""
    args, depth, first = [], 0, open_index + 1
    for j in range(open_index + 1, close_index):
        t = code[j].text
        if t in "([{":
            depth += 1
        elif t in ")]}":
            depth -= 1
        elif t == "," and depth == 0:
            args.append((first, j - 1))
            first = j + 1
    args.append((first, close_index - 1))
    return args


def _sites(text: str, code: list[Token]) -> Iterator[tuple[str, int, int, str, str]]:
    """Every (operator, start, end, replacement, description) of one file's code tokens."""
    for k, tok in enumerate(code):
        prev = code[k - 1].text if k else ";"
        if tok.kind == "punct" and tok.text in _BOUNDARY:
            yield "boundary", tok.start, tok.end, _BOUNDARY[tok.text], f"{tok.text} -> {_BOUNDARY[tok.text]}"
        if tok.kind == "punct" and tok.text in _NEGATE:
            yield "negate", tok.start, tok.end, _NEGATE[tok.text], f"{tok.text} -> {_NEGATE[tok.text]}"
        if tok.kind == "number":
            m = _INT.match(tok.text)
            if m is not None:
                hex_prefix, hex_digits, _, oct_digits, dec_digits, suffix = m.groups()
                if hex_prefix:
                    value, fmt = int(hex_digits, 16), (lambda v, d=hex_digits, p=hex_prefix:
                                                       p + format(v, "X" if d.isupper() else "x").zfill(len(d)))
                elif oct_digits is not None:
                    value, fmt = int(oct_digits, 8), (lambda v, d=oct_digits: "0" + format(v, "o").zfill(len(d)))
                else:
                    value, fmt = int(dec_digits), str
                for delta in (1, -1):
                    if value + delta < 0:
                        continue
                    new = fmt(value + delta) + suffix
                    yield "constant", tok.start, tok.end, new, f"{tok.text} -> {new}"
        if tok.kind == "ident" and tok.text == "return" and k + 2 < len(code):
            nxt, after = code[k + 1], code[k + 2]
            if nxt.text == "0" and after.text == ";":
                yield "return", nxt.start, nxt.end, "-EINVAL", "return 0 -> return -EINVAL"
            elif (nxt.text == "-" and after.kind == "ident" and re.fullmatch(r"E[A-Z0-9]+", after.text)
                  and k + 3 < len(code) and code[k + 3].text == ";"):
                yield "return", nxt.start, after.end, "0", f"return -{after.text} -> return 0"
        if tok.text in _KEYWORDS or not (prev in _STATEMENT_START or (prev == ")" and _closes_header(code, k - 1))):
            continue
        # statements: deletions and WRITE_ONCE
        end = _statement_end(code, k)
        if end < 0 or end == k:
            continue
        stmt = code[k:end]
        # an if/else/loop body becomes an empty block (an empty statement there is a W=1 warning)
        blank = ("{}" if prev in (")", "else") else "") + "\n" * text.count("\n", tok.start, code[end].end)
        if tok.kind == "ident" and len(stmt) >= 3 and stmt[1].text == "(" and _match_paren(code, k + 1) == end - 1:
            for op, pattern in _CALLS.items():
                if pattern.match(tok.text):
                    yield op, tok.start, code[end].end, blank, f"delete {tok.text}()"
                    break
            if tok.text == "WRITE_ONCE":
                args = _split_args(code, k + 1, end - 1)
                if len(args) == 2:
                    (a0, a1), (b0, b1) = args
                    lhs = text[code[a0].start:code[a1].end]
                    rhs = text[code[b0].start:code[b1].end]
                    yield "once", tok.start, code[end].end, f"{lhs} = {rhs};", "WRITE_ONCE(a, b) -> a = b"
            continue
        texts = [t.text for t in stmt]
        steps = texts.count("++") + texts.count("--")
        assigns = sum(1 for t in texts if t in _ASSIGN)
        increment = steps == 1 and assigns == 0 and (texts[0] in ("++", "--") or texts[-1] in ("++", "--"))
        compound = steps == 0 and assigns == 1 and any(stmt[j].text in ("+=", "-=") for j in _depth0(stmt))
        if increment or compound:
            yield "counter", tok.start, code[end].end, blank, f"delete {_short(text[tok.start:code[end].end])}"
    for k, tok in enumerate(code):
        if tok.kind == "ident" and tok.text == "READ_ONCE" and k + 1 < len(code) and code[k + 1].text == "(":
            close = _match_paren(code, k + 1)
            if close > 0:
                inner = text[code[k + 2].start:code[close - 1].end] if close > k + 2 else ""
                if inner:
                    yield "once", tok.start, code[close].end, f"({inner})", "READ_ONCE(x) -> (x)"


def _closes_header(code: list[Token], close: int) -> bool:
    """Whether the ``)`` at ``close`` ends the header of an ``if``, ``for`` or ``while``."""
    depth = 0
    for j in range(close, -1, -1):
        if code[j].text == ")":
            depth += 1
        elif code[j].text == "(":
            depth -= 1
            if depth == 0:
                return j > 0 and code[j - 1].text in ("if", "for", "while")
    return False


def _depth0(stmt: list[Token]) -> list[int]:
    depth, found = 0, []
    for j, t in enumerate(stmt):
        if t.text in "([":
            depth += 1
        elif t.text in ")]":
            depth -= 1
        elif depth == 0:
            found.append(j)
    return found


def _short(snippet: str) -> str:
    one = " ".join(snippet.split())
    return one if len(one) <= 60 else one[:57] + "..."


def _line_span(text: str, start: int, end: int) -> tuple[int, int]:
    first = text.rfind("\n", 0, start) + 1
    last = text.find("\n", end)
    return first, (len(text) if last < 0 else last)


def _trace_calls(code: list[Token]) -> list[tuple[int, int]]:
    """The text spans of the tracepoint calls (``trace_*(...)``): what only the flight recorder sees."""
    spans = []
    for k, tok in enumerate(code):
        if tok.kind == "ident" and tok.text.startswith("trace_") and k + 1 < len(code) and code[k + 1].text == "(":
            close = _match_paren(code, k + 1)
            if close > 0:
                spans.append((tok.start, code[close].end))
    return spans


def mutants_of_source(name: str, text: str, operators: Iterable[str] | None = None) -> list[Mutant]:
    """Every mutant of one C file's text (``name``: its file name, part of each id), in source order."""
    wanted = set(OPERATORS if operators is None else operators)
    code = [t for t in tokenize(text) if t.kind in ("ident", "number", "punct")]
    found: list[Mutant] = []
    seen: set[str] = set()
    traced = _trace_calls(code)
    for op, start, end, replacement, description in _sites(text, code):
        if op not in wanted or any(a <= start < b for a, b in traced):
            continue
        first = text.rfind("\n", 0, start) + 1
        if replacement.strip("\n") == "" and not text[first:start].strip() and text[end:].startswith("\n"):
            start = first  # a deleted statement alone on its line leaves an empty line, not its indentation
        first, last = _line_span(text, start, end)
        before = text[first:last]
        after = text[first:start] + replacement + text[end:last]
        if before == after:
            continue
        digest = hashlib.sha256("\0".join((name, op, before, after)).encode()).hexdigest()[:10]
        line = text.count("\n", 0, start) + 1
        mutant_id = f"{name}:{line}:{op}:{digest}"
        if mutant_id in seen:
            continue
        seen.add(mutant_id)
        mutated = text[:start] + replacement + text[end:]
        diff = "".join(difflib.unified_diff(text.splitlines(keepends=True), mutated.splitlines(keepends=True),
                                            f"a/kmod/{name}", f"b/kmod/{name}", n=2))
        found.append(Mutant(name, line, op, start, end, text[start:end], replacement, description, mutant_id,
                            diff))
    found.sort(key=lambda m: (m.start, m.operator, m.mutant_id))
    return found


def generate_mutants(source: Path, files: Iterable[str] | None = None,
                     operators: Iterable[str] | None = None) -> list[Mutant]:
    """The mutants of ``source/*.c`` (or of the named files), file by file in name order."""
    names = sorted(files) if files is not None else sorted(p.name for p in source.glob("*.c"))
    mutants: list[Mutant] = []
    for name in names:
        mutants += mutants_of_source(name, (source / name).read_text(), operators)
    return mutants


def select_mutants(mutants: list[Mutant], limit: int | None = None, seed: int | None = None,
                   ids: Iterable[str] = ()) -> list[Mutant]:
    """The mutants named by ``ids`` (in that order) if any, else a sample: all, or ``limit`` of them, drawn
    with ``random.Random(seed)`` when a seed is given (the first ``limit`` in source order otherwise)."""
    wanted = list(ids)
    if wanted:
        by_id = {m.mutant_id: m for m in mutants}
        return [by_id[i] for i in wanted]
    chosen = list(mutants)
    if seed is not None:
        chosen = random.Random(seed).sample(chosen, len(chosen))
    return chosen[:limit] if limit is not None else chosen


def write_mutant_tree(source: Path, mutant: Mutant, dest: Path) -> Path:
    """``dest``: a copy of ``source`` with ``mutant`` applied (rewritten from scratch); returns ``dest``."""
    import shutil

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*MUTANT_IGNORE))
    path = dest / mutant.file
    path.write_text(mutant.apply(path.read_text()))
    return dest


# ------------------------------------------------------------------ object code
_IGNORED_SECTIONS = (".note", ".modinfo", ".BTF", ".debug", ".comment", ".gnu_debuglink", ".gnu.build.attributes")


#: ``__FILE__`` strings name the build's scratch folder (``tempfile.mkdtemp(prefix=".KEY.")`` under the cache,
#: :func:`lab.host.cache.publish_dir`): the same length for every build, so replaced in place.
_SCRATCH = re.compile(rb"/\.[0-9a-f]{16}\.[A-Za-z0-9_]{8}/src/")
_SCRATCH_SAME = b"/." + b"0" * 16 + b"." + b"0" * 8 + b"/src/"


def object_code_sections(path: Path) -> dict[str, tuple]:
    """The parts of an ELF object that make its behaviour: per allocated section (build ids, ``.modinfo``,
    BTF and debug info left out), its bytes (or size, for NOBITS) and its relocations as (offset, type,
    symbol name or section, addend)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection

    out: dict[str, tuple] = {}
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        kept = {}
        for index, sec in enumerate(elf.iter_sections()):
            name = sec.name
            if not sec["sh_flags"] & 0x2 or name.startswith(_IGNORED_SECTIONS):  # SHF_ALLOC
                continue
            kept[index] = name
            out[name] = (("nobits", sec["sh_size"]) if sec["sh_type"] == "SHT_NOBITS"
                         else ("bytes", _SCRATCH.sub(_SCRATCH_SAME, sec.data())))
        for sec in elf.iter_sections():
            if not isinstance(sec, RelocationSection) or sec["sh_info"] not in kept:
                continue
            symtab = elf.get_section(sec["sh_link"])
            relocs = []
            for rel in sec.iter_relocations():
                sym = symtab.get_symbol(rel["r_info_sym"])
                label = sym.name
                if not label and sym["st_shndx"] not in ("SHN_UNDEF", "SHN_ABS"):
                    label = "section:" + elf.get_section(sym["st_shndx"]).name
                relocs.append((rel["r_offset"], rel["r_info_type"], label,
                               rel["r_addend"] if rel.is_RELA() else None))
            out[sec.name + "@relocs"] = tuple(relocs)
    return out


def object_code_differs(a: Path, b: Path) -> list[str]:
    """The sections whose code, data or relocations differ between two ELF objects (empty: the same code)."""
    left, right = object_code_sections(a), object_code_sections(b)
    return sorted(name for name in set(left) | set(right) if left.get(name) != right.get(name))


#: Surviving mutants judged equivalent (or equivalent in effect), one per line: ``ID  reason``; ``#`` comments.
#: The reasons are argued in docs/kmod.md; the table keeps them beside the mutant and scores without them.
EQUIVALENTS_FILE = Path(__file__).resolve().parents[2] / "kmod" / "equivalent-mutants.txt"

_MUTANT_ID = re.compile(r"^[\w.-]+\.c:\d+:[a-z]+:[0-9a-f]{10}$")


def load_equivalents(path: Path | None = None) -> dict[str, str]:
    """The mutant ids listed in ``path`` (default :data:`EQUIVALENTS_FILE`) with their reasons (none if it does
    not exist); a line that is not ``ID  reason`` is a :class:`ValueError` naming it."""
    path = path or EQUIVALENTS_FILE
    found: dict[str, str] = {}
    if not path.is_file():
        return found
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        mutant_id, _, reason = line.partition(" ")
        if not _MUTANT_ID.match(mutant_id) or not reason.strip():
            raise ValueError(f"{path}:{number}: not 'FILE:LINE:OPERATOR:HASH  reason': {line[:80]!r}")
        found[mutant_id] = reason.strip()
    return found
