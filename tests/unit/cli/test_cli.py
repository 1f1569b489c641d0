"""Bad input on the command line: one line on stderr, exit status 2, no traceback."""

import pytest

from lab.cli.main import main


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["exec", "--cpus", "0", "--", "true"], "--cpus must be between 1 and 8"),
        (["exec", "--cpus", "nine", "--", "true"], "not a whole number"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["exec"], "no command given"),
        (["--kernel", "/nonexistent/bzImage", "exec", "--", "true"], "kernel image not found: /nonexistent/bzImage"),
        (["exec", "--put", "nosuchfile:/tmp/x", "--", "true"], "--put source not found"),
        (["exec", "--put", "README.md:relative", "--", "true"], "SRC:/ABSOLUTE/DST"),
        (["bench", "boot", "--runs", "2"], "--runs must be at least 5"),
        (["cache", "prune", "--older-than", "soon"], "not a duration: 'soon'"),
        (["cache", "prune", "--keep-last", "-1"], "must be 0 or more"),
        (["cache", "tidy"], "invalid choice: 'tidy'"),
        (["-q", "-v", "cache"], "not allowed with argument"),
        (["--kernel-flavour", "debug", "--kernel", "/nonexistent/bzImage", "image", "build"],
         "--kernel-flavour debug builds its own kernel; it cannot be combined with --kernel"),
        (["--kernel-flavour", "dbg", "image", "build"],
         "invalid choice: 'dbg' (choose from 'cloud', 'debug', 'kcsan')"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CNLAB_CACHE", str(tmp_path))
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("cnlab: error: ") and expected in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "exec" in capsys.readouterr().out
