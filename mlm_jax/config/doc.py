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


def field_comments() -> dict[str, str]:
    """'section.key' (or 'key' at the top) -> the comment on or just above its assignment."""
    source = inspect.getsource(config_defaults)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    sections = {}  # local name -> section (`c.data = d = ...` makes d stand for data)
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assign):
            continue
        targets = [t for t in node.targets if isinstance(t, ast.Attribute)]
        names = [t for t in node.targets if isinstance(t, ast.Name)]
        for attribute in targets:
            owner = attribute.value.id if isinstance(attribute.value, ast.Name) else None
            if owner == "c" and names:
                sections[names[0].id] = attribute.attr
                continue
            key = (
                attribute.attr if owner == "c" else f"{sections.get(owner, owner)}.{attribute.attr}"
            )
            text = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            above = node.lineno - 1  # comment-only lines right above the assignment
            while above in comments and lines[above - 1].lstrip().startswith("#"):
                text.insert(0, comments[above])
                above -= 1
            found[key] = " ".join(text)
    return found


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def describe(config) -> str:
    """One line per field: `key = value  # comment`, and the default where the config file or
    an override changed it."""
    defaults = _flatten(config_defaults.base_config().to_dict())
    comments = field_comments()
    lines = []
    for key, value in _flatten(config.to_dict()).items():
        line = f"{key} = {value!r}"
        if key in defaults and defaults[key] != value:
            line += f"  [default {defaults[key]!r}]"
        if comments.get(key):
            line += f"  # {comments[key]}"
        lines.append(line)
    return "\n".join(lines)
