"""YAML for recipes: the safe loader, and a key written twice is an error, not "last wins".

PyYAML's safe loader keeps the last of two equal keys without a word, so a recipe that sets
`lr` twice trains with whichever came later. Here that is refused with the key and its line.

A recipe is also bounded: at most `MAX_CHARS` characters, and at most `MAX_NODES` values once
its aliases are expanded (a 448-byte "billion laughs" recipe of nested aliases would expand to
millions of values in every later walk over it, error messages included); a recursive alias
is refused too. Both are YAML errors naming the line, like any other.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["MAX_CHARS", "MAX_NODES", "DuplicateKeyError", "TooLargeError", "load"]

#: The longest recipe (or `--set` value) read, in characters.
MAX_CHARS = 1 << 20
#: The most values (scalars, lists, mappings, keys) a recipe may hold with aliases expanded.
MAX_NODES = 100_000


class TooLargeError(yaml.YAMLError):
    """A document longer than `MAX_CHARS`, or larger than `MAX_NODES` once expanded."""

    def __init__(self, problem: str, mark: yaml.Mark | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names one key twice; `problem_mark` points at the second one."""


class UniqueKeySafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses duplicate keys in every mapping, nested ones too."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges; a key written after it overrides, as YAML says
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise DuplicateKeyError(None, None, f"duplicate key {key!r}",
                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """Parse one YAML document with the safe loader, refusing duplicate keys and documents
    longer than `MAX_CHARS` or larger than `MAX_NODES` values once aliases are expanded."""
    if len(text) > MAX_CHARS:
        raise TooLargeError(f"{len(text)} characters, more than the {MAX_CHARS} a recipe may "
                            "have")
    loader = UniqueKeySafeLoader(text)  # a SafeLoader subclass: no objects
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the values `root` stands for with every alias expanded (an alias is the same
    node object again, so each node's count is computed once) and refuse past `MAX_NODES`."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if not expanded:
            if key in open_nodes:
                raise TooLargeError("a recursive alias (a value that contains itself)",
                                    node.start_mark)
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(key)
        total = 1 + sum(sizes.get(id(child), 0) for child in children)
        if total > MAX_NODES:
            raise TooLargeError(f"{total}+ values once its aliases are expanded, more than "
                                f"the {MAX_NODES} a recipe may hold", node.start_mark)
        sizes[key] = total


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
