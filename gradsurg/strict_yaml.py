"""YAML for recipes: the safe loader, and a key written twice is an error, not "last wins".

PyYAML's safe loader keeps the last of two equal keys without a word, so a recipe that sets
`lr` twice trains with whichever came later. Here that is refused with the key and its line.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["DuplicateKeyError", "load"]


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
    """Parse one YAML document with the safe loader, refusing duplicate keys."""
    return yaml.load(text, Loader=UniqueKeySafeLoader)  # a SafeLoader subclass: no objects
