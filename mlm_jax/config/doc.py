"""Every config field with its value and the comment config/defaults.py gives it.

`python -m mlm_jax.main --config=FILE --print_config` prints this table; the comments are read
from config/defaults.py's source, so the table can never disagree with the file it documents.
"""

from __future__ import annotations

import ast
import inspect
import io
import tokenize

from mlm_jax.config import defaults as config_defaults
from mlm_jax.config import keys


def field_comments() -> dict[str, str]:
    """'section.key' (or 'key' at the top) -> the comment on or just above its assignment."""
    source = inspect.getsource(config_defaults)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node, key in _field_assignments(ast.parse(source)):
        text = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        above = node.lineno - 1  # comment-only lines right above the assignment
        while above in comments and lines[above - 1].lstrip().startswith("#"):
            text.insert(0, comments[above])
            above -= 1
        found[key] = " ".join(text)
    return found


def _field_assignments(tree: ast.Module):
    """(assignment, dotted key) of every field: `c.seed = 0` is 'seed'; a section is a function
    that `c.data = _data()` calls, and its `d.dataset = ...` is 'data.dataset'."""
    functions = [f for f in tree.body if isinstance(f, ast.FunctionDef)]
    names = {f.name for f in functions}
    sections = {}  # function -> section
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            called = getattr(node.value.func, "id", None)
            if called in names and isinstance(node.targets[0], ast.Attribute):
                sections[called] = node.targets[0].attr
    for function in functions:
        prefix = f"{sections[function.name]}." if function.name in sections else ""
        for node in ast.walk(function):
            if not isinstance(node, ast.Assign) or not isinstance(node.targets[0], ast.Attribute):
                continue
            if isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) in names:
                continue  # `c.data = _data()`: the section, not a field
            yield node, f"{prefix}{node.targets[0].attr}"


def describe(config) -> str:
    """One line per field: `key = value  # comment`, and the default where the config file or
    an override changed it, and when it may change without making another run."""
    defaults = keys.flatten(config_defaults.base_config())
    comments = field_comments()
    lines = []
    for key, value in keys.flatten(config.to_dict()).items():
        line = f"{key} = {value!r}"
        if key in defaults and defaults[key] != value:
            line += f"  [default {defaults[key]!r}]"
        when = [
            w for w in (keys.ON_RESUME, keys.BETWEEN_PHASES) if config_defaults.can_change(key, w)
        ]
        if when:
            line += f"  [may change {' and '.join(when)}]"
        if comments.get(key):
            line += f"  # {comments[key]}"
        lines.append(line)
    return "\n".join(lines)
