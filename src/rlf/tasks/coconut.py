"""A loader for Coconut-style JSON (a JSON array of `question`, `answer`, `steps`, with optional graph
fields `idx_to_symbol`, `edges`, `root`, `target`, `neg_target`), into the common example format.

Loop targets come from the graph when it is there: the symbols on the path from `root` to `target` (the
root left out when it is the question's subject, as in ProsQA's `Is Tom a ...?`), the answer symbol last.
The path is the one the steps spell (`Tom is a terpus.`, `Every terpus is a brimpus.`) when they walk the
edges from root to target, as ProsQA's do (131 of its 300 validation items have several shortest paths;
the steps say which one is meant); else the shortest path, the first found in edge order. Without a graph
they come from the steps: each step's result (`<<3*4=12>>` -> `12`, `Every lumpus is a rempus.` ->
`rempus`), then the answer's last word, without repeating it.
`hops` = number of targets - 1, as for the generated `graph` task.
"""

from __future__ import annotations

import json
import re
from collections import deque
from pathlib import Path

from rlf.errors import RLFError
from rlf.tasks.schema import Example, LineError, accept, finish_check, json_type, read_bytes

REQUIRED = {"question": str, "answer": str, "steps": list}
GRAPH = ("idx_to_symbol", "edges", "root", "target")
_RESULT = re.compile(r"<<[^<>]*=\s*([^<>=]+?)\s*>>")
_WORD = re.compile(r"[\w.+-]*\w")
_SUBJECT = re.compile(r"\bIs (\w+) an? ")
_LINK = re.compile(r"(?:Every )?(\w+) is an? (\w+)\.?")


def read_coconut(
    path: str | Path,
    tokenizer=None,
    *,
    task: str = "coconut",
    skip_invalid: bool = False,
    reject_path: str | Path | None = None,
    max_tokens: int = 1,
) -> list[Example]:
    """The items of a Coconut-style JSON file as examples; invalid items (with a tokenizer, also a target that is
    not 1 to `max_tokens` tokens, the run's target_tokens) are an RLFError naming file, item number, field and
    reason, unless `skip_invalid` writes them to `reject_path`."""
    try:
        items = json.loads(read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RLFError(f"{path}: not a JSON file: {e}") from None
    if not isinstance(items, list):
        raise RLFError(f"{path}: expected a JSON array of items, found {json_type(items)}")
    valid, errors = [], []
    for number, item in enumerate(items, 1):
        found = _convert(str(path), number, item, task)
        if isinstance(found, Example):
            valid.append((number, found))
        else:
            errors += found
    raw = [json.dumps(item, ensure_ascii=False) for item in items]
    report = finish_check(str(path), valid, errors, raw, tokenizer, unit="item", max_tokens=max_tokens)
    return accept(report, skip_invalid, reject_path)


def _convert(path: str, number: int, item, task: str) -> Example | list[LineError]:
    def bad(field: str | None, reason: str) -> list[LineError]:
        return [LineError(path, number, field, reason, unit="item")]

    if not isinstance(item, dict):
        return bad(None, f"not a JSON object but {json_type(item)}")
    for name, kind in REQUIRED.items():
        if name not in item:
            return bad(name, "missing")
        if not isinstance(item[name], kind):
            return bad(name, f"must be a {kind.__name__}")
    if not item["question"].strip():
        return bad("question", "is empty")
    if not all(isinstance(s, str) for s in item["steps"]):
        return bad("steps", "must be a list of strings")
    meta = {"answer_text": item["answer"], "steps": item["steps"]}
    if any(name in item for name in GRAPH):
        targets = _graph_targets(item)
        if isinstance(targets, tuple):
            return bad(*targets)
        meta["neg"] = _symbol(item, "neg_target")
    else:
        targets = [_step_result(s) for s in item["steps"]]
        answer = _step_result(item["answer"])
        if None in targets or answer is None:
            return bad("steps" if answer else "answer", "has a step or answer with no word to take as its result")
        if not targets or targets[-1] != answer:
            targets.append(answer)
    return Example(f"{task}-{number:06d}", task, item["question"].strip(), targets, targets[-1], len(targets) - 1, meta)


def _graph_targets(item: dict) -> list[str] | tuple[str, str]:
    """The symbols on the shortest root-to-target path, or (field, reason)."""
    missing = [name for name in GRAPH if name not in item]
    if missing:
        return missing[0], f"missing (graph fields come together: {', '.join(GRAPH)})"
    symbols, edges = item["idx_to_symbol"], item["edges"]
    if not isinstance(symbols, list) or not all(isinstance(s, str) and s.strip() for s in symbols):
        return "idx_to_symbol", "must be a list of non-empty strings (not only whitespace)"
    n = len(symbols)

    def is_node(i) -> bool:
        return isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n

    def is_edge(e) -> bool:
        return isinstance(e, list) and len(e) == 2 and all(map(is_node, e))

    if not isinstance(edges, list) or not all(map(is_edge, edges)):
        return "edges", f"must be a list of [from, to] pairs of node numbers 0..{n - 1}"
    for name in ("root", "target", "neg_target"):
        if name in item and not is_node(item[name]):
            return name, f"must be a node number 0..{n - 1}"
    path = _steps_path(item, symbols, edges) or _shortest_path(n, edges, item["root"], item["target"])
    if path is None:
        return "target", f"node {item['target']} is not reachable from root {item['root']} along the edges"
    subject = _SUBJECT.search(item["question"])
    if len(path) > 1 and subject and symbols[path[0]] == subject.group(1):
        path = path[1:]
    return [symbols[i] for i in path]


def _steps_path(item: dict, symbols: list[str], edges: list) -> list[int] | None:
    """The nodes the steps walk (`Tom is a terpus.`, `Every terpus is a brimpus.`), when each step is an edge from
    the last step's node and they lead from root to target; else None."""
    node = {s: i for i, s in reversed(list(enumerate(symbols)))}  # a repeated symbol: its first node
    links = {tuple(e) for e in edges}
    path = [item["root"]]
    for step in item["steps"]:
        m = _LINK.fullmatch(step.strip())
        if not m or node.get(m.group(1)) != path[-1] or (path[-1], node.get(m.group(2))) not in links:
            return None
        path.append(node[m.group(2)])
    return path if len(path) > 1 and path[-1] == item["target"] else None


def _shortest_path(n: int, edges: list, root: int, target: int) -> list[int] | None:
    children: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        children[a].append(b)
    parent = {root: None}
    queue = deque([root])
    while queue:
        node = queue.popleft()
        if node == target:
            path = [node]
            while parent[path[-1]] is not None:
                path.append(parent[path[-1]])
            return path[::-1]
        for child in children[node]:
            if child not in parent:
                parent[child] = node
                queue.append(child)
    return None


def _step_result(step: str) -> str | None:
    """`<<3*4=12>>` -> `12`; otherwise the last word (`Every lumpus is a rempus.` -> `rempus`)."""
    found = _RESULT.findall(step)
    if found:
        return found[-1]
    words = _WORD.findall(step)
    return words[-1] if words else None


def _symbol(item: dict, name: str) -> str | None:
    index = item.get(name)
    return item["idx_to_symbol"][index] if index is not None else None
