"""``cnlab mutate``: mutation testing of the lab module (:mod:`lab.image.mutants`, :mod:`lab.engine.mutation`)."""

from __future__ import annotations

import argparse
import ast
import os
import shlex
import sys
from collections import Counter
from pathlib import Path

from lab.cli.cache_cmd import parse_duration
from lab.errors import UsageError
from lab.image.module import kmod_dir
from lab.image.mutants import EQUIVALENTS_FILE, OPERATORS, generate_mutants, load_equivalents, select_mutants

__all__ = ["add_mutate_parser", "mutate_command", "check_names", "parse_suite"]

CHECKS_FILE = Path(__file__).resolve().parents[1] / "guestside" / "cnlab_checks.py"


def add_mutate_parser(sub, parser_class, positive_int) -> None:
    p = sub.add_parser("mutate", help="mutation testing of kmod/*.c: build mutants, run a suite, table of "
                                      "killed and surviving mutants")
    p.add_argument("--suite", default="quick", metavar="quick|checks|pytest",
                   help="what runs against each mutant: the quick scenarios, guest checks "
                        "(lab/guestside/cnlab_checks.py) or pytest (default quick)")
    p.add_argument("--select", default="", metavar="ITEMS",
                   help="quick: scenario names, checks: check names (comma-separated; default: the whole quick "
                        "set / echo,balance,invariant,perm; 'every': every guest check, in the order of "
                        "cnlab_checks.TESTS); pytest: its arguments (a test path or node ids)")
    p.add_argument("--operators", default=None, metavar="OP,...", help=f"only these ({', '.join(OPERATORS)})")
    p.add_argument("--files", default=None, metavar="FILE,...", help="only these files of kmod/ (e.g. cbus.c)")
    p.add_argument("--id", dest="ids", action="append", default=[], metavar="MUTANT",
                   help="only this mutant (repeatable; ids as --list prints them)")
    p.add_argument("--limit", type=positive_int, default=None, help="at most N mutants")
    p.add_argument("--seed", type=positive_int, default=None,
                   help="draw the --limit sample at random with this seed (default: source order)")
    p.add_argument("-n", "--jobs", type=positive_int, default=1, help="guests in parallel (default 1)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one mutant's suite may take")
    p.add_argument("--budget", type=_budget, default=None, metavar="DURATION",
                   help="start no suite after this long (90m, 2h); the mutants not reached are left for the next "
                        "run of the same command, which resumes (a whole set over several nights)")
    p.add_argument("--out", type=Path, default=Path("results/mutate"),
                   help="folder of results.jsonl (resumable), mutants.json and mutants.html")
    p.add_argument("--list", action="store_true", help="print the selected mutants and counts; build nothing")
    p.add_argument("--build-only", action="store_true",
                   help="build and filter the mutants (compile, warnings, object code), run no suite")
    p.add_argument("--no-baseline", action="store_true",
                   help="do not first check that the suite passes on the unmutated module")


def _budget(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than nothing, got {text!r}")
    return seconds


def check_names() -> list[str]:
    """The guest checks cnlab_checks.py knows (its ``TESTS`` table, read without importing it)."""
    tree = ast.parse(CHECKS_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "TESTS" for t in node.targets):
            return [k.value for k in node.value.keys]  # type: ignore[union-attr]
    return []


def parse_suite(kind: str, select: str, timeout: float):
    from lab.engine.mutation import Suite

    items = tuple(x.strip() for x in select.split(",") if x.strip())
    if kind == "quick":
        from lab.engine.sets import builtin_sets

        known = sorted(p.stem for p in builtin_sets()["quick"])
        unknown = [x for x in items if x not in known]
        if unknown:
            raise UsageError(f"cnlab mutate: --select {unknown[0]!r}: not a quick scenario "
                             f"(have: {', '.join(known)})")
        return Suite("quick", items or tuple(known), timeout)
    if kind == "checks":
        known = check_names()
        if items == ("every",):
            return Suite("checks", tuple(known), timeout)
        unknown = [x for x in items if x not in known]
        if unknown:
            raise UsageError(f"cnlab mutate: --select {unknown[0]!r}: not a guest check (have: {', '.join(known)})")
        return Suite("checks", items or ("echo", "balance", "invariant", "perm"), timeout)
    if kind == "pytest":
        args = tuple(shlex.split(select))
        if not args:
            raise UsageError("cnlab mutate: --suite pytest needs --select with a test path or node ids")
        return Suite("pytest", args, timeout)
    raise UsageError(f"cnlab mutate: --suite {kind!r}: choose quick, checks or pytest")


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def mutate_command(args: argparse.Namespace, make_lab) -> int:
    from lab.report.mutation import mutation_table, write_mutation_table

    source = kmod_dir()
    operators = _csv(args.operators)
    if operators is not None:
        bad = [o for o in operators if o not in OPERATORS]
        if bad or not operators:
            raise UsageError(f"cnlab mutate: --operators {bad[0] if bad else args.operators!r}: unknown operator "
                             f"(have: {', '.join(OPERATORS)})")
    files = _csv(args.files)
    if files is not None:
        have = sorted(p.name for p in source.glob("*.c"))
        bad = [f for f in files if f not in have]
        if bad or not files:
            raise UsageError(f"cnlab mutate: --files {bad[0] if bad else args.files!r}: not a C file of kmod/ "
                             f"(have: {', '.join(have)})")
    if args.limit is not None and args.limit < 1:
        raise UsageError("cnlab mutate: --limit must be at least 1")
    if args.jobs < 1 or args.jobs > 16:
        raise UsageError("cnlab mutate: -n must be between 1 and 16")
    if args.timeout <= 0:
        raise UsageError("cnlab mutate: --timeout must be positive")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"cnlab mutate: --out {args.out}: not a folder")
    suite = None if args.list or args.build_only else parse_suite(args.suite, args.select, args.timeout)
    mutants = generate_mutants(source, files, operators)
    if args.ids:
        known = {m.mutant_id for m in mutants}
        missing = [i for i in args.ids if i not in known]
        if missing:
            raise UsageError(f"cnlab mutate: --id {missing[0]}: no such mutant in this selection "
                             "(cnlab mutate --list prints the ids)")
    chosen = select_mutants(mutants, args.limit, args.seed, args.ids)
    try:
        equivalents = load_equivalents()
    except ValueError as exc:
        raise UsageError(f"cnlab mutate: {exc}") from exc
    if args.list:
        for m in chosen:
            print(f"{m.mutant_id}  {m.description}")
        print(f"{len(chosen)} of {len(mutants)} mutants; by operator: "
              + ", ".join(f"{k} {v}" for k, v in sorted(Counter(m.operator for m in chosen).items()))
              + "; by file: " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(m.file for m in chosen).items())))
        return 0
    from lab.engine.mutation import MutationRun

    lab = make_lab(args)
    args.view.stop()
    run = MutationRun(lab, chosen, suite, args.out, args.jobs, on_line=lambda line: print(line, flush=True),
                      baseline=not args.no_baseline, budget=args.budget)
    try:
        results = run.run()
    except (KeyboardInterrupt, SystemExit) as exc:
        print(f"cnlab mutate: interrupted; every mutant decided so far is in {args.out / 'results.jsonl'} "
              "(the same command resumes)", flush=True)
        sys.stderr.flush()
        # The suites still running hold threads the interpreter would wait for at exit; their guests' QEMUs
        # die with this process.
        os._exit(exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130)
    command = "cnlab " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "cnlab mutate"
    table = mutation_table(list(results.values()), suite.key if suite else None, command, equivalents, run.left)
    write_mutation_table(table, args.out / "mutants.json", args.out / "mutants.html")
    counts = ", ".join(f"{k} {v}" for k, v in table["counts"].items())
    score = table["score"]
    print(f"cnlab mutate: {len(results)} mutants: {counts}"
          + (f"; {len(run.left)} left for the next run (--budget)" if run.left else ""))
    if suite is not None:
        print(f"score: {score['killed']} killed, {score['survived']} survived"
              + (f" ({score['percent']} %)" if score["percent"] is not None else "")
              + (f"; {score['equivalent']} of the survivors listed as equivalent ({EQUIVALENTS_FILE.name}): "
                 f"{score['killed']} of {score['killed'] + score['survived'] - score['equivalent']} others killed"
                 + (f" ({score['percent_non_equivalent']} %)" if score["percent_non_equivalent"] is not None
                    else "") if score["equivalent"] else ""))
        for r in table["mutants"]:
            if "listed_equivalent" in r:
                print(f"  warning: {r['id']} is listed in {EQUIVALENTS_FILE.name} as equivalent but was killed: "
                      f"{r.get('detail', '')[:100]}")
            if r["status"] == "survived":
                print(f"  survived {r['id']}  {r['description']}"
                      + (f"  [equivalent: {r['equivalent'][:80]}]" if "equivalent" in r else ""))
    print(f"wrote {args.out / 'mutants.json'} and {args.out / 'mutants.html'}")
    return 1 if any(r["status"] == "error" for r in results.values()) else 0
