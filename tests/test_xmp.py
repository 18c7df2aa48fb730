"""XMP sidecars: what is written, how an existing sidecar is merged, and what a real reader sees.

The exiftool tests read the sidecars back with Image::ExifTool, the reader closest to what
digiKam, darktable and Lightroom accept; they are skipped when exiftool is not installed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cfclassify.config import Settings
from cfclassify.emulator import EmulatorOptions, start_emulator
from cfclassify.export import export_xmp
from cfclassify.runner import run
from cfclassify.samples import make_photo, make_sample_tree
from cfclassify.store import Store
from cfclassify.xmp import (
    NS_DC,
    NS_DIGIKAM,
    NS_LR,
    NS_RDF,
    Outcome,
    SidecarUnreadable,
    merge_sidecar,
    new_sidecar,
    sidecar_path,
    write_sidecar,
)

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(
    EXIFTOOL is None, reason="exiftool not installed (apt-get install libimage-exiftool-perl)"
)

# A sidecar as another tool leaves it: two descriptions, single-quoted attributes, a comment,
# a rating, a title, darktable's history, a user keyword and one we wrote before (OLDLABEL).
FOREIGN = b"""<?xpacket begin='\xef\xbb\xbf' id='W5M0MpCehiHzreSzNTczkc9d'?>
<x:xmpmeta xmlns:x='adobe:ns:meta/' x:xmptk='Image::ExifTool 12.57'>
<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>
 <!-- kept by the user -->
 <rdf:Description rdf:about=''
  xmlns:xmp='http://ns.adobe.com/xap/1.0/'
  xmlns:darktable='http://darktable.sf.net/'>
  <xmp:Rating>4</xmp:Rating>
  <darktable:history_end>3</darktable:history_end>
 </rdf:Description>
 <rdf:Description rdf:about=''
  xmlns:dc='http://purl.org/dc/elements/1.1/'
  xmlns:lr='http://ns.adobe.com/lightroom/1.0/'>
  <dc:subject><rdf:Bag><rdf:li>holiday</rdf:li><rdf:li>OLDLABEL</rdf:li></rdf:Bag></dc:subject>
  <dc:title><rdf:Alt><rdf:li xml:lang='x-default'>My cat</rdf:li></rdf:Alt></dc:title>
  <lr:hierarchicalSubject><rdf:Bag><rdf:li>places|Rome</rdf:li><rdf:li>cfclassify|OLDLABEL</rdf:li>
  </rdf:Bag></lr:hierarchicalSubject>
 </rdf:Description>
</rdf:RDF>
</x:xmpmeta>
<?xpacket end='w'?>
"""


def items(data: bytes, ns: str, name: str) -> list[str]:
    root = ET.fromstring(data)
    return [li.text or "" for li in root.iterfind(f".//{{{ns}}}{name}//{{{NS_RDF}}}li")]


def keywords_of(data: bytes) -> tuple[list[str], list[str], list[str]]:
    return (
        items(data, NS_DC, "subject"),
        items(data, NS_LR, "hierarchicalSubject"),
        items(data, NS_DIGIKAM, "TagsList"),
    )


def exiftool(*paths: Path) -> list[dict[str, Any]]:
    assert EXIFTOOL is not None
    out = subprocess.run([EXIFTOOL, "-j", "-XMP:all", *map(str, paths)], check=True, capture_output=True)
    data: list[dict[str, Any]] = json.loads(out.stdout)
    return data


def as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


# -- building and merging --------------------------------------------------------------------------


def test_sidecar_names() -> None:
    assert sidecar_path("/a/IMG_1.JPG") == Path("/a/IMG_1.JPG.xmp")
    assert sidecar_path("/a/IMG_1.JPG", "replace") == Path("/a/IMG_1.xmp")
    assert sidecar_path("/a/my.photo.png", "replace") == Path("/a/my.photo.xmp")


def test_new_sidecar_writes_the_three_keyword_properties() -> None:
    data = new_sidecar(["TABBY", "TIGER CAT"], "cfclassify")
    assert data.startswith(b"<?xpacket begin=")
    assert keywords_of(data) == (
        ["TABBY", "TIGER CAT"],
        ["cfclassify|TABBY", "cfclassify|TIGER CAT"],
        ["cfclassify/TABBY", "cfclassify/TIGER CAT"],
    )
    root = ET.fromstring(data)
    assert root.find(f".//{{{NS_DC}}}subject/{{{NS_RDF}}}Bag") is not None
    assert root.find(f".//{{{NS_DIGIKAM}}}TagsList/{{{NS_RDF}}}Seq") is not None


def test_separators_inside_a_label_do_not_make_a_hierarchy() -> None:
    data = new_sidecar(["AC/DC|X"], "cfclassify")
    assert keywords_of(data) == (["AC/DC|X"], ["cfclassify|AC-DC-X"], ["cfclassify/AC-DC-X"])


def test_merge_replaces_only_our_keywords_and_keeps_everything_else() -> None:
    merged = merge_sidecar(FOREIGN, ["TABBY", "TIGER CAT"], "cfclassify")
    assert merged is not None
    subject, hierarchy, tags = keywords_of(merged)
    assert subject == ["holiday", "TABBY", "TIGER CAT"]  # OLDLABEL was ours: gone
    assert hierarchy == ["places|Rome", "cfclassify|TABBY", "cfclassify|TIGER CAT"]
    assert tags == ["cfclassify/TABBY", "cfclassify/TIGER CAT"]
    text = merged.decode()
    for kept in ("<xmp:Rating>4</xmp:Rating>", "<darktable:history_end>3</darktable:history_end>",
                 '<rdf:li xml:lang="x-default">My cat</rdf:li>', "<!-- kept by the user -->",
                 'x:xmptk="Image::ExifTool 12.57"'):  # fmt: skip
        assert kept in text
    assert merge_sidecar(merged, ["TABBY", "TIGER CAT"], "cfclassify") is None  # idempotent


def test_merge_with_no_labels_removes_ours_and_keeps_the_users() -> None:
    merged = merge_sidecar(FOREIGN, [], "cfclassify")
    assert merged is not None
    assert keywords_of(merged) == (["holiday"], ["places|Rome"], [])
    assert b"TagsList" not in merged


def test_merge_keeps_a_user_keyword_that_equals_a_label() -> None:
    merged = merge_sidecar(FOREIGN.replace(b"holiday", b"TABBY"), ["TABBY"], "cfclassify")
    assert merged is not None
    assert items(merged, NS_DC, "subject") == ["TABBY"]  # not duplicated


def test_merge_into_a_packet_without_descriptions_or_keywords() -> None:
    bare = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='" + NS_RDF.encode() + b"'/></x:xmpmeta>"
    merged = merge_sidecar(bare, ["TABBY"], "cfclassify")
    assert merged is not None and keywords_of(merged) == (
        ["TABBY"],
        ["cfclassify|TABBY"],
        ["cfclassify/TABBY"],
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not xml at all",
        b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><unclosed></x:xmpmeta>",
        b"<html><body>no rdf here</body></html>",
        b"<rdf:RDF xmlns:rdf='" + NS_RDF.encode() + b"'><rdf:Description xmlns:dc='" + NS_DC.encode()
        + b"'><dc:subject>plain text</dc:subject></rdf:Description></rdf:RDF>",
    ],
)  # fmt: skip
def test_unreadable_sidecars_raise(data: bytes) -> None:
    with pytest.raises(SidecarUnreadable):
        merge_sidecar(data, ["TABBY"], "cfclassify")


def test_write_sidecar_creates_merges_and_leaves_unreadable_alone(tmp_path: Path) -> None:
    image = tmp_path / "cat.jpg"
    image.write_bytes(b"\xff\xd8 not really")
    assert write_sidecar(image, [], root_tag="cfclassify") == (Outcome.NO_LABELS, tmp_path / "cat.jpg.xmp")
    assert not (tmp_path / "cat.jpg.xmp").exists()
    assert write_sidecar(image, ["TABBY"], root_tag="cfclassify")[0] is Outcome.CREATED
    assert write_sidecar(image, ["TABBY"], root_tag="cfclassify")[0] is Outcome.UNCHANGED
    assert write_sidecar(image, ["TIGER CAT"], root_tag="cfclassify")[0] is Outcome.UPDATED
    assert items((tmp_path / "cat.jpg.xmp").read_bytes(), NS_DC, "subject") == ["TIGER CAT"]

    broken = tmp_path / "dog.jpg.xmp"
    broken.write_bytes(b"<garbage")
    dog = tmp_path / "dog.jpg"
    assert write_sidecar(dog, ["BEAGLE"], root_tag="cfclassify")[0] is Outcome.UNREADABLE
    assert broken.read_bytes() == b"<garbage"
    assert write_sidecar(dog, ["BEAGLE"], root_tag="cfclassify", force=True)[0] is Outcome.REPLACED
    assert items(broken.read_bytes(), NS_DC, "subject") == ["BEAGLE"]
    assert image.read_bytes() == b"\xff\xd8 not really"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.jpg", "cat.jpg.xmp", "dog.jpg.xmp"]


# -- export --format xmp on a real run -------------------------------------------------------------


@pytest.fixture
def classified(tmp_path: Path) -> Iterator[tuple[Settings, Path]]:
    tree = tmp_path / "photos"
    make_sample_tree(tree, unique=6, duplicates=3)
    with start_emulator(EmulatorOptions()) as emu:
        settings = Settings().replace(
            db=str(tmp_path / "x.db"),
            cloudflare__api_base=emu.api_base,
            cloudflare__account_id="acct",
            cloudflare__api_token="tok",
            xmp__min_score=0.0,
        )
        assert run(settings, [str(tree)], handle_signals=False).exit_code == 0
    yield settings, tree


def image_hashes(tree: Path) -> dict[Path, str]:
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in tree.rglob("*")
        if p.is_file() and p.suffix != ".xmp"
    }


def test_export_xmp_tags_every_classified_path_and_touches_no_image(
    classified: tuple[Settings, Path],
) -> None:
    settings, tree = classified
    before = image_hashes(tree)
    with Store(settings.db) as store:
        report = export_xmp(store, settings, min_score=0.1)
        rows = [r for r in store.iter_file_rows(settings.cloudflare.model) if r.status == "done"]
    assert report.counts["created"] + report.counts["no_labels"] == len(rows) == 9  # duplicates too
    assert report.not_classified == 1  # the broken file
    assert image_hashes(tree) == before
    for row in rows:
        wanted = [x.label for x in row.labels if x.score >= 0.1]
        sidecar = Path(row.path + ".xmp")
        assert sidecar.exists() == bool(wanted)
        if wanted:
            assert items(sidecar.read_bytes(), NS_DC, "subject") == wanted

    with Store(settings.db) as store:
        again = export_xmp(store, settings, min_score=0.1)
    assert again.counts["unchanged"] == report.counts["created"] and again.counts["created"] == 0


def test_export_xmp_uses_the_configured_threshold_and_root_tag(classified: tuple[Settings, Path]) -> None:
    settings, _ = classified
    settings = settings.replace(xmp__min_score=0.25, xmp__root_tag="auto")
    with Store(settings.db) as store:
        export_xmp(store, settings)
        rows = [r for r in store.iter_file_rows(settings.cloudflare.model) if r.status == "done"]
    for row in rows:
        wanted = [x.label for x in row.labels if x.score >= 0.25]
        sidecar = Path(row.path + ".xmp")
        if wanted:
            assert items(sidecar.read_bytes(), NS_LR, "hierarchicalSubject") == [f"auto|{w}" for w in wanted]
        else:
            assert not sidecar.exists()


def test_replace_naming_refuses_a_shared_sidecar_name(tmp_path: Path) -> None:
    tree = tmp_path / "photos"
    tree.mkdir()
    (tree / "a.jpg").write_bytes(make_photo(1, (64, 48)))
    (tree / "a.png").write_bytes(make_photo(2, (64, 48), "PNG"))
    (tree / "b.jpg").write_bytes(make_photo(3, (64, 48)))
    with start_emulator(EmulatorOptions()) as emu:
        settings = Settings().replace(
            db=str(tmp_path / "x.db"), cloudflare__api_base=emu.api_base, cloudflare__account_id="a",
            cloudflare__api_token="t", xmp__sidecar_name="replace", xmp__min_score=0.0,
        )  # fmt: skip
        assert run(settings, [str(tree)], handle_signals=False).exit_code == 0
    with Store(settings.db) as store:
        report = export_xmp(store, settings)
    assert report.name_clashes == 2 and report.counts["created"] == 1
    assert sorted(p.name for p in tree.iterdir()) == ["a.jpg", "a.png", "b.jpg", "b.xmp"]


# -- a real XMP reader -----------------------------------------------------------------------------


@needs_exiftool
def test_exiftool_reads_the_keywords_export_wrote(classified: tuple[Settings, Path]) -> None:
    settings, _ = classified
    with Store(settings.db) as store:
        export_xmp(store, settings, min_score=0.0)
        rows = [r for r in store.iter_file_rows(settings.cloudflare.model) if r.status == "done"]
    read = {Path(d["SourceFile"]): d for d in exiftool(*(Path(r.path + ".xmp") for r in rows))}
    assert len(read) == len(rows)
    for row in rows:
        data = read[Path(row.path + ".xmp")]
        labels = [x.label for x in row.labels]
        assert as_list(data["Subject"]) == labels
        assert as_list(data["HierarchicalSubject"]) == [f"cfclassify|{x}" for x in labels]
        assert as_list(data["TagsList"]) == [f"cfclassify/{x}" for x in labels]


@needs_exiftool
def test_exiftool_sees_the_other_fields_of_a_merged_sidecar(tmp_path: Path) -> None:
    image = tmp_path / "cat.jpg"
    image.write_bytes(make_photo(5, (64, 48)))
    sidecar = tmp_path / "cat.jpg.xmp"
    sidecar.write_bytes(FOREIGN)
    [before] = exiftool(sidecar)
    assert write_sidecar(image, ["TABBY", "TIGER CAT"], root_tag="cfclassify")[0] is Outcome.UPDATED
    [after] = exiftool(sidecar)
    assert after["Rating"] == before["Rating"] == 4
    assert after["Title"] == before["Title"] == "My cat"
    assert after["History_end"] == before["History_end"] == 3
    assert as_list(after["Subject"]) == ["holiday", "TABBY", "TIGER CAT"]
    assert as_list(after["HierarchicalSubject"]) == [
        "places|Rome",
        "cfclassify|TABBY",
        "cfclassify|TIGER CAT",
    ]
    assert as_list(after["TagsList"]) == ["cfclassify/TABBY", "cfclassify/TIGER CAT"]
    assert set(before) - {"TagsList"} <= set(after)  # nothing exiftool saw before is lost
