"""The commands of README.md and docs/*.md, as a reader would copy them: every command that starts with `python`,
`./reproduce.sh` or `bash` (in a code block or in running text) names a file or module that exists, and its own
parser accepts the flags as written. Nothing runs: each script's main() is stopped right after it parsed."""
import argparse
import glob
import importlib
import importlib.util
import os
import re
import shlex

import pytest

from conftest import ROOT

PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
STARTS = ("python", "./reproduce.sh", "bash")
SHELL_WORDS = {"while", "until", "do", "then", "if", "elif", "else", "!", "time", "exec"}
OPERATORS = {";", "&&", "||", "|", "(", ")", ">", ">>", "<", "&", ";;"}


def simple_commands(line):
    """The simple commands of one shell line, as word lists: split at ; && || | ( ) and redirections, leading
    shell keywords dropped, shell variables ($w) read as 0, a trailing `...` (the text's ellipsis) dropped."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split, lex.commenters = True, "#"
    cmds, cur = [], []
    for tok in lex:
        if tok in OPERATORS or set(tok) <= set(";&|()<>"):
            cmds.append(cur)
            cur = []
        else:
            cur.append(tok)
    cmds.append(cur)
    out = []
    for c in cmds:
        while c and c[0] in SHELL_WORDS:
            c = c[1:]
        while c and c[-1] == "...":
            c = c[:-1]
        c = ["0" if re.fullmatch(r"\$\w+", w) else w for w in c]
        if c and c[0] in STARTS:
            out.append(c)
    return out


def page_commands(page):
    """(page, command words) of every command in the page's code blocks and inline code."""
    text = open(os.path.join(ROOT, page)).read()
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            found += simple_commands(line)
    prose = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        if span.startswith(tuple(s + " " for s in STARTS)) or span == "./reproduce.sh":
            found += simple_commands(span)
    return [(page, c) for c in found]


COMMANDS = [pc for page in PAGES for pc in page_commands(page)]


class Parsed(Exception):
    """Raised by parse_args once the arguments are parsed, so that main() does no work."""


def parses(main, argv, monkeypatch):
    """Whether main(argv) gets past its parser: True, or the parser's one-line error."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    try:
        main(argv)
    except Parsed:
        return True
    except SystemExit as e:
        return True if e.code == 0 else f"exit {e.code}"  # 0: --help
    return "main() returned without parsing"


def script_main(path):
    """The entry point of a script at the repository root or in tools/: cli(argv) where there is one, else
    main(argv)."""
    name = os.path.splitext(os.path.basename(path))[0]
    if os.path.dirname(path) == ROOT:
        mod = importlib.import_module(name)
    else:  # tools/ is a folder of scripts, not a package
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return getattr(mod, "cli", None) or mod.main


def gpu_check_stages(path):
    return set(re.findall(r"^(\w+)\)(?:\s*#.*)?$", open(path).read(), re.M))  # a case pattern, perhaps commented


def test_the_pages_hold_the_commands_a_reader_needs():
    cmds = [" ".join(c) for _, c in COMMANDS]
    assert len(cmds) >= 30
    for want in ("./reproduce.sh", "./reproduce.sh --plan laptop", "python -m pytest -q tests"):
        assert any(c == want for c in cmds), want
    assert any(c.startswith("python train.py --task 1 --init shrink_perturb") for c in cmds)


def test_readme_runs_the_tests_as_ci_does():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    readme = open(os.path.join(ROOT, "README.md")).read()
    ci_cmd = next(line for line in ci.splitlines() if "pytest" in line).strip()
    tests = readme.split("## Tests\n", 1)[1]
    assert re.findall(r"```bash\n(.*?)\n```", tests, re.S)[0].strip() == ci_cmd
    assert any("pip install" in line and "-r requirements.txt" in line for line in ci.splitlines())
    assert "pip install -r requirements.txt" in readme


@pytest.mark.parametrize("page, cmd", COMMANDS, ids=[f"{p}: {' '.join(c)[:70]}" for p, c in COMMANDS])
def test_command_names_a_file_that_exists_and_its_parser_takes_its_flags(page, cmd, monkeypatch, capsys):
    if cmd[0] == "bash":
        script = os.path.join(ROOT, cmd[1])
        assert os.path.isfile(script), cmd
        if len(cmd) > 2:
            assert cmd[2] in gpu_check_stages(script), cmd
        return
    if cmd[0] == "./reproduce.sh":
        cmd = ["python", "-m", "repro.reproduce"] + cmd[1:]
    assert cmd[0] == "python" and len(cmd) >= 2, cmd
    if cmd[1] == "-c":
        compile(cmd[2], "<-c>", "exec")
        return
    if cmd[1] == "-m":
        if cmd[2] == "pytest":
            assert all(os.path.exists(os.path.join(ROOT, a)) for a in cmd[3:] if not a.startswith("-")), cmd
            return
        path = os.path.join(ROOT, *cmd[2].split(".")) + ".py"
        assert os.path.isfile(path), f"{page}: {cmd[2]} is not a module of the repository"
        main, argv = importlib.import_module(cmd[2]).main, cmd[3:]
    else:
        path = os.path.join(ROOT, cmd[1])
        assert os.path.isfile(path), f"{page}: {cmd[1]} does not exist"
        main, argv = script_main(path), cmd[2:]
    ok = parses(main, argv, monkeypatch)
    capsys.readouterr()
    assert ok is True, f"{page}: {' '.join(cmd)}: {ok}"
