"""Docs that cannot drift: the commands, Python snippets and links of README.md, docs/*.md and CONTRIBUTING.md
are checked against the code. Nothing is run or trained: each command is only parsed.

Commands. Every fenced shell block (```bash, ```sh, ```shell, ```console; in console blocks only the lines
after a ``$ `` prompt) and every inline code span that starts a command (`python ...`, `accelerate launch ...`,
`torchrun ...`; one that names a script with no arguments is prose and skipped) is read; backslash-continued
lines are joined and ``# comments`` dropped. In it, each invocation of one of our scripts -- ``python X.py``,
``accelerate launch [launcher flags] X.py``, ``torchrun [launcher flags] X.py`` (X.py a script at the repository
root or in benchmarks/), ``python -m utils.hub`` -- has its arguments (up to the next ``|``, ``;``, ``&&``,
``>``...) parsed by that script's own ``parse_args(argv)``; a wrapped ``bash -c "..."`` string is read the same
way. Launcher flags are not checked. A script name that does not exist, an unknown or misspelled flag (a prefix
of a flag too, which argparse would take), or a bad value is reported as ``file:line: ...`` with argparse's own
message.

Placeholders. An optional part in brackets, ``[--hub_private_repo]``, is checked without them. A value the
reader fills in -- ``<model A>``, ``<A>/epoch_4``, ``$VAR``, ``\\$VAR``, ``${VAR}``, ``$((...))`` -- is replaced,
before the line is split into words, by ``1``: a value every argparse type of our scripts accepts (an int, a
float, a name or a path), so only the flags around it are judged.

Side effects. parse_args runs in an empty temporary working directory. The one check of a parse_args that
looks at the reader's files (evaluate_fairface.py: ``--samples_dir 'X' is not a folder``) comes after argparse
accepted every flag and value; such a message makes the check create that (relative) folder in the temporary
directory and parse again, so the rest of the line is still judged.

Python. Every ```python block is compiled, and the modules of this repository it imports (``utils...``, the
scripts) are imported and the imported names looked up.

Links. Every relative link ``[text](path#anchor)`` (images too) resolves to an existing file, and an anchor to a
heading of the target, slugged as GitHub does: lowercase, punctuation other than ``-`` and ``_`` dropped,
spaces to ``-``, the n-th repeat of a heading gets ``-n``.
"""

import argparse
import ast
import contextlib
import glob
import importlib.util
import io
import os
import re
import shlex
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_FILES = sorted(["README.md", "CONTRIBUTING.md", *(os.path.relpath(p, REPO) for p in glob.glob(
    os.path.join(REPO, "docs", "*.md")))])
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
PLACEHOLDER = re.compile(r"\$\(\([^)]*\)\)|\$\{[^}]*\}|\\?\$\w+|<[^<>\n]+>")
DUMMY = "1"
LAUNCHERS = {"python", "python3", "accelerate", "torchrun"}
MODULES = {"utils.hub": os.path.join("utils", "hub", "__main__.py")}  # python -m targets that take a command line
SEPARATORS = re.compile(r"^[;&|<>()]+$")
INLINE_COMMAND = re.compile(r"(?<!`)`((?:python3?|accelerate\s+launch|torchrun)\s[^`]+)`(?!`)")
OUR_MODULES = ("utils", "train_fairface", "sample_fairface", "make_grid", "evaluate_fairface", "app")
FOLDER_CHECK = re.compile(r"'([^']+)' is not a folder")


# ------------------------------------------------------------------------------------------------ reading markdown
def fenced_blocks(path):
    """[(language, first line number, [lines])] of the fenced code blocks of a markdown file."""
    blocks, current = [], None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            stripped = line.strip()
            if current is None and stripped.startswith("```"):
                current = (stripped[3:].strip().lower(), number + 1, [])
            elif current is not None and stripped.startswith("```"):
                blocks.append(current)
                current = None
            elif current is not None:
                current[2].append(line.rstrip("\n"))
    return blocks


def prose(path):
    """The markdown text with fenced blocks blanked (line numbers kept)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    inside = False
    for i, line in enumerate(lines):
        fence = line.strip().startswith("```")
        if inside or fence:
            lines[i] = ""
        if fence:
            inside = not inside
    return "\n".join(lines)


def shell_commands(path):
    """[(line number, command text, inline?)] of the fenced shell blocks and inline command spans of a markdown
    file."""
    commands = []
    for language, start, lines in fenced_blocks(path):
        if language not in SHELL_LANGUAGES:
            continue
        pending, first = "", None
        for number, line in enumerate(lines, start):
            if language == "console":
                if not (line.startswith("$ ") or pending):
                    continue
                line = line[2:] if not pending else line
            first = number if not pending else first
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            commands.append((first, pending + line, False))
            pending = ""
        if pending:
            commands.append((first, pending, False))
    text = prose(path)
    for match in INLINE_COMMAND.finditer(text):
        commands.append((text.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split()), True))
    return commands


# ------------------------------------------------------------------------------------------------ commands
def split_words(command):
    """Shell words of one command line, placeholders replaced, comments dropped; None if it cannot be split."""
    lexer = shlex.shlex(PLACEHOLDER.sub(DUMMY, command), posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # an unclosed quote
        return None
    optional = False  # [--flag VALUE]: an optional part, checked without its brackets
    for i, word in enumerate(words):
        if word.startswith("[-"):
            word, optional = word[1:], True
        if optional and word.endswith("]"):
            word, optional = word[:-1], False
        words[i] = word
    return words


def invocations(words):
    """[(script path relative to the repo, argv)] of our scripts started in these shell words."""
    found, i = [], 0
    while i < len(words):
        word = words[i]
        if " " in word and any(launcher in word.split() for launcher in LAUNCHERS):  # bash -c "..."
            found += invocations(split_words(word) or [])
        elif word in LAUNCHERS and not (word == "accelerate" and words[i + 1:i + 2] != ["launch"]):
            end = next((j for j in range(i + 1, len(words)) if SEPARATORS.match(words[j])), len(words))
            command = words[i + 1:end]
            if word.startswith("python") and command[:1] == ["-m"]:
                if len(command) > 1 and command[1] in MODULES:
                    found.append((MODULES[command[1]], command[2:]))
            else:
                script = next((k for k, w in enumerate(command) if w.endswith(".py")), None)
                if script is not None:
                    found.append((command[script], command[script + 1:]))
            i = end
            continue
        i += 1
    return found


_modules = {}


def script_module(script):
    """The module of one of our scripts, imported by path (once)."""
    if script not in _modules and script in MODULES.values():  # a module of a package: by its dotted name
        _modules[script] = importlib.import_module(script[:-len(".py")].replace(os.sep, "."))
    if script not in _modules:
        name = "docs_check_" + re.sub(r"\W", "_", script)
        spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, script))
        module = importlib.util.module_from_spec(spec)
        folder = os.path.dirname(os.path.join(REPO, script))
        if folder not in sys.path:  # as `python X.py` has it: benchmarks/ import their common.py
            sys.path.insert(0, folder)
        spec.loader.exec_module(module)
        _modules[script] = module
    return _modules[script]


@contextlib.contextmanager
def whole_flags_only():
    """argparse takes any unambiguous prefix of a flag (--num_image for --num_images); docs spell flags whole, so
    the parsers made meanwhile refuse prefixes (allow_abbrev=False: argparse's own "unrecognized arguments")."""
    init = argparse.ArgumentParser.__init__

    def strict(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "allow_abbrev": False})

    argparse.ArgumentParser.__init__ = strict
    try:
        yield
    finally:
        argparse.ArgumentParser.__init__ = init


def parse_problem(script, argv, workdir):
    """None if ``script``'s parse_args accepts argv, else argparse's message (one line)."""
    path = os.path.normpath(script)
    if not os.path.isfile(os.path.join(REPO, path)) or not (
            os.path.dirname(path) in ("", "benchmarks") or path in MODULES.values()):
        return f"{script}: no such script of this repository"
    parse_args = getattr(script_module(path), "parse_args", None)
    if parse_args is None:
        return f"{script} has no parse_args(argv) to check its command line with"
    for _attempt in range(2):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), whole_flags_only():
            try:
                parse_args(list(argv))
                return None
            except SystemExit as exit:
                code = exit.code
        if code in (0, None):  # --help
            return None
        message = (err.getvalue().strip().splitlines() or [f"exit status {code}"])[-1]
        folder = FOLDER_CHECK.search(message)
        if not folder or os.path.isabs(folder.group(1)):
            return message
        os.makedirs(os.path.join(workdir, folder.group(1)), exist_ok=True)  # the reader's folder; judge the rest
    return message


def command_problems(doc, workdir):
    """``file:line: ...`` for every command of our scripts in ``doc`` that its parse_args refuses."""
    problems, checked = [], []
    old = os.getcwd()
    os.chdir(workdir)
    try:
        for line, command, inline in shell_commands(doc):
            words = split_words(command)
            if words is None:
                problems.append(f"{doc}:{line}: cannot split into shell words: {command}")
                continue
            for script, argv in invocations(words):
                if inline and not argv:  # prose that names a script (`python -m utils.hub`), no command line
                    continue
                checked.append((doc, line, script))
                problem = parse_problem(script, argv, workdir)
                if problem:
                    problems.append(f"{doc}:{line}: {script} {shlex.join(argv)}: {problem}")
    finally:
        os.chdir(old)
    return problems, checked


# ------------------------------------------------------------------------------------------------ links
def slug(heading):
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """The anchors GitHub gives the headings of a markdown file."""
    seen, result = {}, set()
    for line in prose(path).split("\n"):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def link_problems(doc):
    """``file:line: ...`` for every relative link of ``doc`` whose file or anchor does not exist."""
    text = re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), prose(doc))  # links in code are not links
    problems = []
    for match in re.finditer(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text):
        target = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        line = text.count("\n", 0, match.start()) + 1
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
        if not os.path.exists(full):
            problems.append(f"{doc}:{line}: link to {target}: no such file {os.path.relpath(full)}")
        elif anchor and full.endswith(".md") and anchor not in anchors(full):
            problems.append(f"{doc}:{line}: link to {target}: no heading #{anchor} in {os.path.relpath(full)}")
    return problems


# ------------------------------------------------------------------------------------------------ python snippets
def python_problems(doc):
    """``file:line: ...`` for Python blocks that do not compile or import what is not in our modules."""
    problems = []
    for language, start, lines in fenced_blocks(doc):
        if language not in ("python", "py"):
            continue
        source = "\n".join(lines)
        try:
            tree = compile(source, f"{doc}:{start}", "exec", ast.PyCF_ONLY_AST)
            compile(tree, f"{doc}:{start}", "exec")
        except SyntaxError as error:
            problems.append(f"{doc}:{start + (error.lineno or 1) - 1}: does not compile: {error.msg}")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OUR_MODULES:
                pairs = [(node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                pairs = [(alias.name, None) for alias in node.names if alias.name.split(".")[0] in OUR_MODULES]
            else:
                continue
            for module, name in pairs:
                try:
                    imported = importlib.import_module(module)
                    if name is not None and not hasattr(imported, name):
                        importlib.import_module(f"{module}.{name}")  # a submodule (from utils import hub)
                except ImportError as error:
                    problems.append(f"{doc}:{start + node.lineno - 1}: {error}")
    return problems


# ------------------------------------------------------------------------------------------------ the docs
@pytest.mark.parametrize("doc", DOC_FILES)
def test_commands_in_docs_parse(doc, tmp_path):
    problems, checked = command_problems(os.path.join(REPO, doc), str(tmp_path))
    assert not problems, "\n".join(problems)


def test_the_command_check_sees_every_script():
    """Guards the checker itself: it finds commands of every script the README shows."""
    scripts = {os.path.normpath(script) for doc in DOC_FILES
               for _line, command, _inline in shell_commands(os.path.join(REPO, doc))
               for script, _argv in invocations(split_words(command) or [])}
    assert {"train_fairface.py", "sample_fairface.py", "make_grid.py", "evaluate_fairface.py", "app.py",
            os.path.join("utils", "hub", "__main__.py"), os.path.join("benchmarks", "conditioning_fidelity.py")} <= scripts


def test_readme_test_command_is_what_ci_runs():
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        ci_command = f.read().strip().splitlines()[-1]
    readme = [command.split("#")[0].strip() for _line, command, _inline in
              shell_commands(os.path.join(REPO, "README.md"))]
    assert ci_command in readme


@pytest.mark.parametrize("doc", DOC_FILES)
def test_links_and_anchors_resolve(doc):
    problems = link_problems(os.path.join(REPO, doc))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOC_FILES)
def test_python_snippets_compile_and_import(doc):
    problems = python_problems(os.path.join(REPO, doc))
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------ the checker fails
PLANTED = """# Planted

## Sampling

```bash
python evaluate_fairface.py --samples_dir eval/samples --output_dir e   # the reader's folder: fine
python sample_fairface.py --conditon 42 --num_image 2                    # misspelled, a prefix: line 7
accelerate launch --num_processes 2 train_fairface.py --learning_rate -1 \\
    --output_dir out                                                     # bad value: line 8
python make_grid.py --atlas --model <model A> --num_inference_steps 6    # placeholder: fine
python -m utils.hub run --hub_model_id "not a repo"                      # bad repo id: line 11
python sample_fairfce.py --condition 42                                  # no such script: line 12
```

Text with `python evaluate_fairface.py --model x --num_images_per_condition zero` inline (line 15).

[fine](#sampling), [fine too](../README.md), [broken file](nowhere.md#sampling) and
[broken anchor](#no-such-heading) (line 18).

```python
from utils.model.pipeline import load_pipeline, no_such_function
```
"""


def test_checker_reports_a_planted_bad_flag_with_file_and_line(tmp_path):
    doc = tmp_path / "docs" / "planted.md"
    doc.parent.mkdir()
    doc.write_text(PLANTED, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    problems, checked = command_problems(str(doc), str(work))
    assert len(checked) == 7
    lines = {int(p.split(":")[1]): p for p in problems}
    assert sorted(lines) == [7, 8, 11, 12, 15], problems
    assert "unrecognized arguments: --conditon 42 --num_image 2" in lines[7]
    assert "argument --learning_rate: must be a positive number" in lines[8]
    assert "--hub_model_id" in lines[11] and "sample_fairfce.py: no such script" in lines[12]
    assert "--num_images_per_condition" in lines[15] and all(p.startswith(f"{doc}:") for p in problems)


def test_checker_reports_a_planted_broken_link_and_import(tmp_path):
    doc = tmp_path / "docs" / "planted.md"
    doc.parent.mkdir()
    doc.write_text(PLANTED, encoding="utf-8")
    (tmp_path / "README.md").write_text("# Readme\n", encoding="utf-8")
    problems = link_problems(str(doc))
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{doc}:17:") and "no such file" in problems[0]
    assert problems[1].startswith(f"{doc}:18:") and "no heading #no-such-heading" in problems[1]
    imports = python_problems(str(doc))
    assert len(imports) == 1 and "no_such_function" in imports[0] and imports[0].startswith(f"{doc}:21:")


def test_slugs_follow_github():
    assert slug("The demo run (`--demo`)") == "the-demo-run---demo"
    assert slug("Sampling: the pipeline vs the seed project's loop") == "sampling-the-pipeline-vs-the-seed-projects-loop"
    assert slug("Framing and EMA (issue 15)") == "framing-and-ema-issue-15"
    assert slug("Publishing to and using a model from the Hugging Face Hub") == \
        "publishing-to-and-using-a-model-from-the-hugging-face-hub"
