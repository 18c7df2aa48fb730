"""XMP sidecars: the labels as keywords where photo managers look for them. No SQL here.

A sidecar sits beside its image (``photo.jpg.xmp`` for digiKam and darktable, or ``photo.xmp``
for Lightroom and Capture One, per ``xmp.sidecar_name``); the image file itself is never opened
for writing. Each label at or above the score threshold is written three ways (SPEC "Labels in
photo managers"):

- ``dc:subject``, a flat ``rdf:Bag``: ``TABBY`` (every manager, and IPTC keyword readers);
- ``lr:hierarchicalSubject``, an ``rdf:Bag``: ``cfclassify|TABBY`` (Lightroom, Immich, darktable);
- ``digiKam:TagsList``, an ``rdf:Seq``: ``cfclassify/TABBY`` (digiKam, Immich).

The rule for a sidecar that already exists (a photo manager or a person may have written it):

- It is **merged in place**. Only *our* keywords change: entries of ``lr:hierarchicalSubject`` and
  ``digiKam:TagsList`` under the root tag, and the ``dc:subject`` entries they name (what we
  wrote last time). Every other element, attribute, namespace and keyword stays. When the merged
  keywords equal what is there, the file is not rewritten at all.
- If it cannot be parsed (not XML, or no ``rdf:RDF`` in it, or one of the three properties is not
  an array), it is left alone and reported; ``force=True`` replaces it with a fresh sidecar.

ElementTree re-serialises a merged file: prefixes are kept (each file's own are registered before
writing), comments and processing instructions inside the packet are kept, indentation may change
and the ``xpacket`` wrapper is written afresh. Writes go to a temporary file in the same folder
that replaces the sidecar atomically, so a crash leaves the old sidecar or the new, never half.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal

NS_X = "adobe:ns:meta/"
NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
NS_DC = "http://purl.org/dc/elements/1.1/"
NS_LR = "http://ns.adobe.com/lightroom/1.0/"
NS_DIGIKAM = "http://www.digikam.org/ns/1.0/"
_OURS = {"x": NS_X, "rdf": NS_RDF, "dc": NS_DC, "lr": NS_LR, "digiKam": NS_DIGIKAM}

RDF_RDF = f"{{{NS_RDF}}}RDF"
RDF_DESCRIPTION = f"{{{NS_RDF}}}Description"
RDF_LI = f"{{{NS_RDF}}}li"
RDF_ABOUT = f"{{{NS_RDF}}}about"
_ARRAYS = {f"{{{NS_RDF}}}{kind}" for kind in ("Bag", "Seq", "Alt")}

_PACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
_PACKET_END = '\n<?xpacket end="w"?>\n'


class SidecarUnreadable(ValueError):
    """An existing sidecar is not XMP we can merge into; it is left alone unless forced."""


class Outcome(Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    REPLACED = "replaced"  # unreadable, overwritten because of force
    UNREADABLE = "unreadable"  # left alone
    NO_LABELS = "no_labels"  # nothing at the threshold and no sidecar to clean up


@dataclass(frozen=True, slots=True)
class _Property:
    tag: str
    array: str  # rdf:Bag or rdf:Seq
    separator: str | None  # hierarchy separator; None for the flat dc:subject


_SUBJECT = _Property(f"{{{NS_DC}}}subject", f"{{{NS_RDF}}}Bag", None)
_HIERARCHY = _Property(f"{{{NS_LR}}}hierarchicalSubject", f"{{{NS_RDF}}}Bag", "|")
_TAGS_LIST = _Property(f"{{{NS_DIGIKAM}}}TagsList", f"{{{NS_RDF}}}Seq", "/")


def _register(namespaces: Iterable[tuple[str, str]]) -> None:
    for prefix, uri in namespaces:
        # ElementTree reserves ns0, ns1, ... and cannot declare a default namespace by name.
        with contextlib.suppress(ValueError):
            if prefix:
                ET.register_namespace(prefix, uri)


_register(_OURS.items())


def sidecar_path(image_path: str | Path, naming: Literal["append", "replace"] = "append") -> Path:
    """``photo.jpg`` → ``photo.jpg.xmp`` (append) or ``photo.xmp`` (replace)."""
    image = Path(image_path)
    return image.with_name(image.name + ".xmp") if naming == "append" else image.with_suffix(".xmp")


def keywords(labels: Sequence[str], root_tag: str) -> dict[str, list[str]]:
    """The three keyword lists for ``labels``, keyed by property tag, in the order given."""
    flat = list(dict.fromkeys(label.strip() for label in labels if label.strip()))
    return {
        _SUBJECT.tag: flat,
        _HIERARCHY.tag: [f"{root_tag}|{_leaf(label)}" for label in flat],
        _TAGS_LIST.tag: [f"{root_tag}/{_leaf(label)}" for label in flat],
    }


def _leaf(label: str) -> str:
    # A separator inside a label would make a hierarchy of it in one manager or another.
    return label.replace("|", "-").replace("/", "-")


def new_sidecar(labels: Sequence[str], root_tag: str) -> bytes:
    """A fresh sidecar holding ``labels`` as keywords."""
    meta = ET.Element(f"{{{NS_X}}}xmpmeta", {f"{{{NS_X}}}xmptk": "cfclassify"})
    rdf = ET.SubElement(meta, RDF_RDF)
    description = ET.SubElement(rdf, RDF_DESCRIPTION, {RDF_ABOUT: ""})
    for prop in (_SUBJECT, _HIERARCHY, _TAGS_LIST):
        items = keywords(labels, root_tag)[prop.tag]
        if items:
            _fill(ET.SubElement(ET.SubElement(description, prop.tag), prop.array), items)
    return _serialise(meta, ())


def merge_sidecar(existing: bytes, labels: Sequence[str], root_tag: str) -> bytes | None:
    """``existing`` with our keywords set to ``labels``, or None when it already says exactly that.

    Raises ``SidecarUnreadable`` when ``existing`` is not XMP we can safely edit.
    """
    root, namespaces = _parse(existing)
    rdf = root if root.tag == RDF_RDF else root.find(f".//{RDF_RDF}")
    if rdf is None:
        raise SidecarUnreadable("no rdf:RDF element: not an XMP packet")
    descriptions = rdf.findall(RDF_DESCRIPTION)
    found = {prop.tag: _find_array(descriptions, prop) for prop in (_SUBJECT, _HIERARCHY, _TAGS_LIST)}
    wanted = keywords(labels, root_tag)

    # What we wrote last time is named by the entries under our root tag.
    previous: set[str] = set()
    for prop in (_HIERARCHY, _TAGS_LIST):
        array = found[prop.tag]
        for item in _items(array[1]) if array else []:
            if prop.separator and item.startswith(root_tag + prop.separator):
                previous.add(item[len(root_tag) + 1 :])

    def ours(prop: _Property, item: str) -> bool:
        if prop.separator is None:
            return item in previous or item in wanted[prop.tag]
        return item.startswith(root_tag + prop.separator)

    changed = False
    for prop in (_SUBJECT, _HIERARCHY, _TAGS_LIST):
        array = found[prop.tag]
        current = _items(array[1]) if array else []
        theirs = [item for item in current if not ours(prop, item)]
        merged = theirs + wanted[prop.tag]
        if merged == current:
            continue
        changed = True
        if array is None:
            if not descriptions:
                descriptions.append(ET.SubElement(rdf, RDF_DESCRIPTION, {RDF_ABOUT: ""}))
            _fill(ET.SubElement(ET.SubElement(descriptions[0], prop.tag), prop.array), merged)
        elif merged:
            _fill(array[1], merged)
        else:
            array[2].remove(array[0])  # our keywords were all there was: drop the empty property
    return _serialise(root, namespaces) if changed else None


def write_sidecar(
    image_path: str | Path,
    labels: Sequence[str],
    *,
    root_tag: str,
    naming: Literal["append", "replace"] = "append",
    force: bool = False,
) -> tuple[Outcome, Path]:
    """Create, merge into or (forced) replace the sidecar of ``image_path``. Raises OSError."""
    target = sidecar_path(image_path, naming)
    if target == Path(image_path):  # never, by construction; the promise is worth a check
        raise OSError(f"refusing to write a sidecar over the image {image_path}")
    try:
        existing = target.read_bytes()
    except FileNotFoundError:
        if not labels:
            return Outcome.NO_LABELS, target
        _replace_atomically(target, new_sidecar(labels, root_tag))
        return Outcome.CREATED, target
    try:
        merged = merge_sidecar(existing, labels, root_tag)
    except SidecarUnreadable:
        if not force:
            return Outcome.UNREADABLE, target
        _replace_atomically(target, new_sidecar(labels, root_tag))
        return Outcome.REPLACED, target
    if merged is None:
        return Outcome.UNCHANGED, target
    _replace_atomically(target, merged)
    return Outcome.UPDATED, target


def _parse(data: bytes) -> tuple[ET.Element, list[tuple[str, str]]]:
    try:
        namespaces = [ns for _, ns in ET.iterparse(io.BytesIO(data), events=("start-ns",))]
        parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))
        parser.feed(data)
        root = parser.close()
    except ET.ParseError as exc:
        raise SidecarUnreadable(f"not well-formed XML: {exc}") from exc
    return root, [(str(prefix), str(uri)) for prefix, uri in namespaces]


def _find_array(
    descriptions: list[ET.Element], prop: _Property
) -> tuple[ET.Element, ET.Element, ET.Element] | None:
    """(property element, its rdf array, the description holding it), or None when absent."""
    for description in descriptions:
        element = description.find(prop.tag)
        if element is None:
            continue
        arrays = [child for child in element if child.tag in _ARRAYS]
        if len(arrays) != 1:
            raise SidecarUnreadable(f"{prop.tag} is not an RDF array")
        return element, arrays[0], description
    return None


def _items(array: ET.Element) -> list[str]:
    return [(li.text or "").strip() for li in array.findall(RDF_LI)]


def _fill(array: ET.Element, items: Sequence[str]) -> None:
    for li in array.findall(RDF_LI):
        array.remove(li)
    for item in items:
        ET.SubElement(array, RDF_LI).text = item


def _serialise(root: ET.Element, namespaces: Iterable[tuple[str, str]]) -> bytes:
    _register(namespaces)  # the file's own prefixes, so they survive the round trip
    try:
        ET.indent(root, space=" ")
        body = ET.tostring(root, encoding="unicode")
    finally:
        _register(_OURS.items())
    return (_PACKET_BEGIN + body + _PACKET_END).encode("utf-8")


def _replace_atomically(target: Path, data: bytes) -> None:
    temporary = target.with_name(f".{target.name}.cfclassify-tmp")
    try:
        with open(temporary, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if target.exists():
            shutil.copymode(target, temporary)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
