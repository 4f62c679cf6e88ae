"""A small DOM of a report page (html.parser from the standard library), for tests that read
what a person sees: the header's numbers, the finding cards, the tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

VOID = {"meta", "img", "br", "hr", "input", "link"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Any] = field(default_factory=list)  # Node or str
    parent: Node | None = field(default=None, repr=False)

    def text(self) -> str:
        """The text a person reads inside this node (no styles)."""
        if self.tag == "style":
            return ""
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        found = []
        for c in self.children:
            if isinstance(c, Node):
                if c.tag == tag and all(c.attrs.get(k) == v for k, v in attrs.items()):
                    found.append(c)
                found += c.find_all(tag, **attrs)
        return found

    def ancestors(self, tag: str) -> list[Node]:
        out, node = [], self.parent
        while node is not None:
            if node.tag == tag:
                out.append(node)
            node = node.parent
        return out


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("document")
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, parent=self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(page: str) -> Node:
    builder = _Builder()
    builder.feed(page)
    return builder.root


def header_numbers(root: Node) -> dict[str, str]:
    """The header's key numbers: {label: value}."""
    header = root.find_all("header")[0]
    dts = [n.text() for n in header.find_all("dt")]
    dds = [n.text() for n in header.find_all("dd")]
    return dict(zip(dts, dds, strict=True))


def table_after(root: Node, heading: str) -> list[list[str]]:
    """The rows (cell texts) of the first table after the h3 whose text is ``heading``."""
    for section in root.find_all("section"):
        seen = False
        for child in section.children:
            if isinstance(child, Node) and child.tag == "h3" and child.text() == heading:
                seen = True
            elif seen and isinstance(child, Node) and child.tag == "table":
                body = child.find_all("tbody")[0]
                return [[td.text() for td in tr.find_all("td")] for tr in body.find_all("tr")]
    raise AssertionError(f"no table after {heading!r}")
