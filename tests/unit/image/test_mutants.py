"""Mutant generation on small C snippets, and the object-code filter on two tiny gcc objects."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from lab.image.mutants import (
    OPERATORS,
    generate_mutants,
    mutants_of_source,
    object_code_differs,
    select_mutants,
    tokenize,
)

SNIPPET = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
#define LIMIT(x) ((x) < 10 && (x) != 3)
/* a comment: if (a < b) kfree(p); return 0; x++; 7 */
static const char *s = "a < b == c; kfree(p); 42";
static char c = '<';

static int f(struct st *cc, int a, int b, void *p)
{
	if (a < b)
		cc->n++;
	if (a == b)
		return -EINVAL;
	mutex_lock(&cc->lock);
	cc->bytes += a;
	WRITE_ONCE(cc->flag, true);
	b = READ_ONCE(cc->flag);
	mutex_unlock(&cc->lock);
	synchronize_rcu();
	smp_wmb();
	wake_up_process(cc->t);
	kfree(p);
	cbus_add(&cc->sent, 0x10);
	return 0;
}
"""


def _by_op(mutants):
    out = {}
    for m in mutants:
        out.setdefault(m.operator, []).append(m)
    return out


def test_each_operator_finds_its_sites_in_code_only():
    ms = mutants_of_source("x.c", SNIPPET)
    ops = _by_op(ms)
    assert set(ops) == set(OPERATORS)
    code_start = SNIPPET.index("static int f")
    assert all(m.start >= code_start for m in ms), [m.mutant_id for m in ms if m.start < code_start]
    assert {m.description for m in ops["boundary"]} == {"< -> <="}
    assert {m.description for m in ops["negate"]} == {"< -> >=", "== -> !="}
    assert {m.description for m in ops["lock"]} == {"delete mutex_lock()", "delete mutex_unlock()"}
    assert {m.description for m in ops["sync"]} == {"delete synchronize_rcu()"}
    assert {m.description for m in ops["barrier"]} == {"delete smp_wmb()"}
    assert {m.description for m in ops["wake"]} == {"delete wake_up_process()"}
    assert {m.description for m in ops["free"]} == {"delete kfree()"}
    assert {m.description for m in ops["counter"]} == {"delete cc->n++;", "delete cc->bytes += a;",
                                                      "delete cbus_add()"}
    assert {m.description for m in ops["once"]} == {"WRITE_ONCE(a, b) -> a = b", "READ_ONCE(x) -> (x)"}
    assert {m.description for m in ops["return"]} == {"return -EINVAL -> return 0", "return 0 -> return -EINVAL"}
    assert {m.description for m in ops["constant"]} == {"0x10 -> 0x11", "0x10 -> 0x0f", "0 -> 1"}


def test_applied_mutants_keep_every_line_in_place_and_bodies_stay_statements():
    for m in mutants_of_source("x.c", SNIPPET):
        mutated = m.apply(SNIPPET)
        assert mutated.count("\n") == SNIPPET.count("\n"), m.mutant_id
    (inc,) = [m for m in mutants_of_source("x.c", SNIPPET, ["counter"]) if m.description == "delete cc->n++;"]
    assert "if (a < b)\n\t\t{}\n" in inc.apply(SNIPPET)
    (once,) = [m for m in mutants_of_source("x.c", SNIPPET, ["once"]) if m.description.startswith("WRITE")]
    assert "\tcc->flag = true;\n" in once.apply(SNIPPET)
    assert "-\tWRITE_ONCE(cc->flag, true);\n+\tcc->flag = true;\n" in once.diff


def test_ids_are_stable_and_name_file_line_operator():
    a = mutants_of_source("x.c", SNIPPET)
    b = mutants_of_source("x.c", SNIPPET, ["sync", "lock"])
    assert {m.mutant_id for m in b} <= {m.mutant_id for m in a}
    assert [m.mutant_id for m in a] == [m.mutant_id for m in mutants_of_source("x.c", SNIPPET)]
    assert len({m.mutant_id for m in a}) == len(a)
    (sync,) = [m for m in b if m.operator == "sync"]
    file, line, op, digest = sync.mutant_id.split(":")
    assert (file, int(line), op, len(digest)) == ("x.c", 19, "sync", 10)
    # an edit elsewhere that moves no line keeps the id; the hash covers the changed line only
    edited = SNIPPET.replace("static char c = '<';", "static char c = '>';")
    assert sync.mutant_id in {m.mutant_id for m in mutants_of_source("x.c", edited)}


def test_nothing_is_mutated_in_comments_strings_or_preprocessor_lines():
    text = ('#define A(x) \\\n\t((x) < 1 ? kfree(x) : 0)\n// x < 1; kfree(p);\n/* 5 == 6 */\n'
            'static const char *t = "return 0; i++; 3 > 2";\nstatic char q = \'=\';\n')
    assert mutants_of_source("y.c", text) == []
    kinds = [t.kind for t in tokenize(text)]
    assert kinds[:3] == ["pp", "comment", "comment"]


def test_nothing_is_mutated_inside_a_tracepoint_call():
    text = ("static void f(struct st *cc, u64 depth)\n{\n"
            "\ttrace_cnlab_drop(cc->cpu, CNLAB_DROP_FULL, 1);\n"
            "\ttrace_cnlab_insert(cc->cpu, depth + 1,\n\t\t\t   depth < 2 ? 3 : 4);\n"
            "\tcc->n += 1;\n}\n")
    mutants = mutants_of_source("t.c", text)
    assert [(m.line, m.operator, m.original) for m in mutants] == [
        (6, "counter", "\tcc->n += 1;"), (6, "constant", "1"), (6, "constant", "1")]


def test_selection_by_limit_seed_and_id(tmp_path):
    (tmp_path / "a.c").write_text(SNIPPET)
    (tmp_path / "b.c").write_text(SNIPPET)
    every = generate_mutants(tmp_path)
    assert {m.file for m in every} == {"a.c", "b.c"}
    assert select_mutants(every, 3) == every[:3]
    s1, s2 = select_mutants(every, 5, seed=12), select_mutants(every, 5, seed=12)
    assert s1 == s2 and s1 != every[:5]
    assert select_mutants(every, 8, seed=12)[:5] == s1  # a larger sample with the same seed extends the smaller
    assert select_mutants(every, ids=[every[7].mutant_id]) == [every[7]]
    assert all(m.file == "b.c" for m in generate_mutants(tmp_path, ["b.c"]))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_object_code_filter_sees_code_changes_and_ignores_equivalent_ones(tmp_path):
    def obj(name: str, body: str) -> object:
        src = tmp_path / f"{name}.c"
        src.write_text(f"extern void g(int);\nint f(int a, int b)\n{{\n{body}\n}}\n")
        out = tmp_path / f"{name}.o"
        subprocess.run(["gcc", "-O2", "-g", "-c", str(src), "-o", str(out)], check=True)
        return out

    base = obj("base", "\tif (a < b)\n\t\tg(1);\n\treturn a + 1;")
    same = obj("same", "\t/* only a comment differs */ if (a < b)\n\t\tg(1);\n\treturn a + 1;")
    flipped = obj("flip", "\tif (a <= b)\n\t\tg(1);\n\treturn a + 1;")
    deleted = obj("del", "\tif (a < b)\n\t\t{}\n\treturn a + 1;")
    assert object_code_differs(base, same) == []  # debug info differs (columns), code does not
    assert ".text" in object_code_differs(base, flipped)
    assert object_code_differs(base, deleted)  # the call and its relocation are gone
