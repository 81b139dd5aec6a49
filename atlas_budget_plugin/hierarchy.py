"""Scope hierarchy: declared parent links between scope values, and the attribution of calls to ancestors.

A link says that one scope value belongs to another: ``actor=alice`` → ``team=red``, ``tag.agent=planner`` →
``project=apollo`` → ``team=red``. A call that names only ``alice`` is attributed to ``team=red`` too, so a
``team = "red"`` policy governs it and team reports include it. A value may have several parents (a user in two
teams counts in both); cycles are refused. Parents are tag-like values (team, project, session, persona or
``tag.<name>``), the things calls are grouped under; children may be any scope value, columns included.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from hookspecs import LLMCall

from .exceptions import ValidationError
from .types import CALL_DIMENSIONS, SCOPE_KEYS, TAG_DIMENSIONS, Scope

#: (key, value): a call dimension (actor, provider, model, operation, category) or a tag name (team, env, ...).
Node = tuple[str, str]

#: Tag names a call attributed to ancestors carries: tag name -> values.
Attribution = dict[str, frozenset[str]]


def parse_node(text: str, role: str = "scope value") -> Node:
    """``"actor=alice"``, ``"team=red"`` or ``"tag.agent=planner"`` as a Node; a clear error otherwise."""
    key, sep, value = str(text).partition("=")
    key = key.strip()
    if not sep or not key or not value:
        raise ValidationError(f"{role} {text!r} must look like key=value, e.g. actor=alice or team=red")
    if key.startswith("tag."):
        key = key[4:]
        if not key:
            raise ValidationError(f"{role} {text!r} needs a tag name, e.g. tag.agent=planner")
        if key in CALL_DIMENSIONS:
            raise ValidationError(f"{role} {text!r}: {key!r} is a call field, not a tag; write {key}=... instead")
    elif key not in SCOPE_KEYS:
        raise ValidationError(f"{role} {text!r}: unknown key {key!r}; allowed: {', '.join(SCOPE_KEYS)}, tag.<name>")
    if len(value) > 200 or "\x00" in value:
        raise ValidationError(f"{role} {text!r}: the value must be 1 to 200 characters without NUL")
    return key, value


def node_text(node: Node) -> str:
    key, value = node
    return f"{key}={value}" if key in SCOPE_KEYS else f"tag.{key}={value}"


def is_tag_like(node: Node) -> bool:
    return node[0] not in CALL_DIMENSIONS


def call_nodes(call: LLMCall) -> list[Node]:
    """The scope values a call names itself."""
    found = [(key, getattr(call, key)) for key in CALL_DIMENSIONS if getattr(call, key) is not None]
    # A tag named like a call field (a tag "actor") is not that field: it takes no part in the hierarchy.
    return found + sorted((k, v) for k, v in call.tags.items() if k not in CALL_DIMENSIONS)


@dataclass(frozen=True)
class Hierarchy:
    """The links of one tenant: each value's parents."""

    parents: dict[Node, frozenset[Node]] = field(default_factory=dict)

    @classmethod
    def of(cls, links: Iterable[tuple[Node, Node]]) -> Hierarchy:
        parents: dict[Node, set[Node]] = {}
        for child, parent in links:
            parents.setdefault(child, set()).add(parent)
        return cls({child: frozenset(ps) for child, ps in parents.items()})

    def ancestors(self, node: Node) -> set[Node]:
        """Every value above ``node``, through any number of links (not ``node`` itself)."""
        seen: set[Node] = set()
        todo = list(self.parents.get(node, ()))
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self.parents.get(current, ()))
        return seen

    def descendants(self, node: Node) -> set[Node]:
        """Every value below ``node``."""
        children: dict[Node, set[Node]] = {}
        for child, parents in self.parents.items():
            for parent in parents:
                children.setdefault(parent, set()).add(child)
        seen: set[Node] = set()
        todo = list(children.get(node, ()))
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(children.get(current, ()))
        return seen

    def lineage(self, node: Node) -> list[list[Node]]:
        """Every path from ``node`` up to a value with no parent, shortest first."""
        paths: list[list[Node]] = []

        def walk(path: list[Node]) -> None:
            # Links are checked for cycles when made; the guard keeps a corrupted store from recursing for ever.
            above = sorted(p for p in self.parents.get(path[-1], ()) if p not in path)
            if not above:
                paths.append(path)
            for parent in above:
                walk([*path, parent])

        walk([node])
        return sorted(paths, key=lambda p: (len(p), [node_text(n) for n in p]))

    def check_link(self, child: Node, parent: Node) -> None:
        """Refuse a link that is not tag-like upwards or that would close a cycle."""
        if not is_tag_like(parent):
            raise ValidationError(
                f"parent {node_text(parent)!r} must be a team, project, session, persona or tag.<name> value: calls "
                "are attributed to their ancestors through tags"
            )
        if child == parent or child in self.ancestors(parent):
            raise ValidationError(
                f"linking {node_text(child)!r} under {node_text(parent)!r} would make a cycle: "
                f"{node_text(parent)!r} already belongs to {node_text(child)!r}"
            )

    def attribution(self, call: LLMCall) -> Attribution:
        """Tag values the call belongs to through its ancestors (beyond what it names itself)."""
        if not self.parents:
            return {}
        found: dict[str, set[str]] = {}
        for node in call_nodes(call):
            for key, value in self.ancestors(node):
                if call.tags.get(key) != value:
                    found.setdefault(key, set()).add(value)
        return {key: frozenset(values) for key, values in found.items()}


def covers(scope: Scope, call: LLMCall, attributed: Attribution) -> bool:
    """``Scope.matches`` where a tag condition is also met by a value the call is attributed to."""
    if not attributed:
        return scope.matches(call)
    for key in CALL_DIMENSIONS:
        wanted = getattr(scope, key)
        if wanted is not None and getattr(call, key) != wanted:
            return False
    wanted_tags = {key: getattr(scope, key) for key in TAG_DIMENSIONS if getattr(scope, key) is not None}
    wanted_tags.update(scope.tags)
    return all(call.tags.get(k) == v or v in attributed.get(k, ()) for k, v in wanted_tags.items())
