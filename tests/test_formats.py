"""Readers and writers of interaction logs and item metadata (`linkedout.data.formats`).

Every fixture is a tiny file written at test time in the real layout (RecBole atomic, MovieLens-100K
``u.data``/``u.item``, MicroLens ``*_pairs.csv``/``.tsv``/``_title_en.csv``); the MicroLens ones are
*format fixtures*, not MicroLens data.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linkedout.data.formats import (
    DataFormatError,
    ItemTable,
    LoadedDataset,
    detect_format,
    load_interactions,
    write_atomic,
)
from linkedout.data.interactions import Interactions


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def seqs(data: LoadedDataset | Interactions) -> dict:
    """Raw user id -> list of raw item ids in time order."""
    inter = data.interactions if isinstance(data, LoadedDataset) else data
    return {u: inter.item_ids[inter.sequence(i)].tolist() for i, u in enumerate(inter.user_ids.tolist())}


ATOMIC_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "2\t10\t4\t100\n"
    "1\t10\t3\t300\n"
    "1\t9\t5\t300\n"  # same time as item 10 -> ordered by item id: 9 before 10
    "1\t20\t1\t200\n"
    "2\t20\t2\t50\n"
)
ATOMIC_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    '9\tSe7en "cut"\t1995\tCrime Thriller\n'
    "10\tToy Story\t1995\tAnimation Children's Comedy\n"
    "20\tUnknown\t\t\n"
)


@pytest.fixture
def atomic_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "toy"
    write(folder / "toy.inter", ATOMIC_INTER)
    write(folder / "toy.item", ATOMIC_ITEM)
    return folder


# --- readers ------------------------------------------------------------------------------------------


def test_atomic_folder_and_file(atomic_dir: Path) -> None:
    for target in (atomic_dir, atomic_dir / "toy.inter"):
        ds = load_interactions(target)
        assert ds.format == "atomic" and ds.name == "toy"
        assert seqs(ds) == {1: [20, 9, 10], 2: [20, 10]}
        assert ds.interactions.item_ids.tolist() == [9, 10, 20]  # numeric ids become numbers, sorted
        assert ds.interactions.timestamps.dtype == np.int64
        assert any("implicit feedback" in n for n in ds.notes)
        assert ds.item_meta[9] == {"title": 'Se7en "cut"', "year": 1995, "genres": ["Crime", "Thriller"]}
        assert ds.item_meta[np.int64(20)] == {"title": "Unknown", "year": None, "genres": []}
        assert set(ds.timings) == {"read", "build"}


def test_min_rating_filters_events(atomic_dir: Path) -> None:
    ds = load_interactions(atomic_dir, min_rating=3)
    assert seqs(ds) == {1: [9, 10], 2: [10]}
    assert ds.interactions.n_items == 2  # item 20 had only low ratings


def test_tie_order_is_item_id_whatever_the_row_order(tmp_path: Path) -> None:
    rows = [("u", "b", 5), ("u", "a", 5), ("u", "c", 1), ("v", "10", 7), ("v", "9", 7)]
    for k, perm in enumerate([rows, rows[::-1]]):
        text = "user,item,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in perm)
        ds = load_interactions(write(tmp_path / f"log{k}.csv", text))
        assert seqs(ds) == {"u": ["c", "a", "b"], "v": ["10", "9"]}  # string ids: code-point order
    ints = "user,item,ts\n1,10,7\n1,9,7\n1,100,7\n"
    assert seqs(load_interactions(write(tmp_path / "ints.csv", ints))) == {1: [9, 10, 100]}


def test_atomic_round_trip(atomic_dir: Path, tmp_path: Path) -> None:
    ds = load_interactions(atomic_dir)
    inter_path = write_atomic(ds, tmp_path / "out")
    assert inter_path == tmp_path / "out" / "toy.inter"
    assert inter_path.read_text().splitlines()[0] == "user_id:token\titem_id:token\ttimestamp:float"
    back = load_interactions(inter_path)
    for name in ("offsets", "items", "timestamps", "user_ids", "item_ids"):
        assert np.array_equal(getattr(back.interactions, name), getattr(ds.interactions, name)), name
    assert back.item_meta == ds.item_meta
    # Interactions alone (string ids, float times) need a name and write no .item
    inter = Interactions.from_arrays(["x", "y", "x"], ["a", "b", "c"], [1.5, 2.0, 0.5])
    p = write_atomic(inter, tmp_path / "bare", "bare")
    assert not p.with_suffix(".item").exists()
    again = load_interactions(p).interactions
    assert seqs(again) == seqs(inter) and again.timestamps.tolist() == inter.timestamps.tolist()
    with pytest.raises(ValueError, match="name is required"):
        write_atomic(inter, tmp_path / "bare")


def test_atomic_untyped_comma_header(tmp_path: Path) -> None:
    """MicroLens' own scripts write ``.inter`` as pandas CSV (``item_id,user_id,timestamp``)."""
    ds = load_interactions(write(tmp_path / "ks" / "ks.inter", "item_id,user_id,timestamp\n7,1,0\n5,1,1\n"))
    assert seqs(ds) == {1: [7, 5]}


U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|Café Society (1995)|01-Jan-1995||http://y|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0\n"
    "3|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)


def test_movielens_original_layout(tmp_path: Path) -> None:
    folder = tmp_path / "ml-100k"
    write(folder / "u.data", "196\t1\t3\t881250949\n186\t2\t3\t891717742\n196\t3\t1\t881250940\n")
    write(folder / "u.item", U_ITEM, encoding="latin-1")
    ds = load_interactions(folder)
    assert ds.format == "movielens" and ds.name == "ml-100k"
    assert seqs(ds) == {186: [2], 196: [3, 1]}
    assert ds.item_meta[1]["title"] == "Toy Story" and ds.item_meta[1]["year"] == 1995
    assert ds.item_meta[1]["genres"] == ["Animation", "Children's", "Comedy"]
    assert ds.item_meta[2]["title"] == "Café Society"  # latin-1 decoded
    assert ds.item_meta[3] == {
        "title": "unknown",
        "year": None,
        "genres": ["unknown"],
        "release_date": "",
        "imdb_url": "",
    }
    assert load_interactions(folder / "u.data", min_rating=2).interactions.n_events == 2


PAIRS_CSV = "user,item,timestamp\n1,30,1583424861443\n1,10,1583424861000\n2,10,1583424862000\n"
TITLES = '10,A title, with commas\n30,"Quoted, title"\n20,Never watched\n'


def test_microlens_format_fixture_csv_preferred(tmp_path: Path) -> None:
    folder = tmp_path / "ml-fixture"
    write(folder / "MicroLens-100k_pairs.csv", PAIRS_CSV)
    write(folder / "MicroLens-100k_pairs.tsv", "1\t99 98\n")  # must lose to the csv (no timestamps)
    write(folder / "MicroLens-100k_title_en.csv", TITLES)
    ds = load_interactions(folder)
    assert ds.format == "microlens" and ds.name == "MicroLens-100k"
    assert seqs(ds) == {1: [10, 30], 2: [10]}
    assert any("has timestamps" in n for n in ds.notes)
    assert ds.item_meta[10]["title"] == "A title, with commas"
    assert ds.item_meta[30]["title"] == "Quoted, title"
    assert 20 in ds.item_meta  # metadata may describe items nobody watched (cold start)


def test_microlens_format_fixture_headerless_csv_and_tsv(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "a" / "X_pairs.csv", "5,7,2\n5,6,1\n")
    assert seqs(load_interactions(csv_path)) == {5: [6, 7]}
    tsv = write(tmp_path / "b" / "MicroLens-1M_pairs.tsv", "1\t3 1 2\n2\t2  3\n3\t\n")
    write(tmp_path / "b" / "MicroLens-1M_title_en.csv", "item,title\n1,one\n2,two\n")
    ds = load_interactions(tsv.parent)
    assert seqs(ds) == {1: [3, 1, 2], 2: [2, 3]}  # file order is the time; user 3 has no events
    assert ds.item_meta[2] == {"title": "two"}
    assert any("position" in n for n in ds.notes)


def test_generic_csv_guesses_columns(tmp_path: Path) -> None:
    text = "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,10,3,1260759100\n"
    path = write(tmp_path / "ratings.csv", text)
    ds = load_interactions(path)
    assert ds.format == "csv" and seqs(ds) == {1: [10, 31]}
    tsv = write(tmp_path / "log.tsv", "visitor_id\tvideo_id\tts\nA\t007\t2\nA\t7\t1\n")
    ds = load_interactions(tsv)
    assert seqs(ds) == {"A": ["7", "007"]}  # leading zeros keep ids as strings: "007" != "7"


def test_generic_csv_explicit_columns_dates_and_no_time(tmp_path: Path) -> None:
    path = write(tmp_path / "x.txt", "who;what;when\nu;b;2021-01-02 10:00:00\nu;a;2021-01-01 09:00:00\n")
    ds = load_interactions(path, user_col="who", item_col="what", time_col="when")
    assert seqs(ds) == {"u": ["a", "b"]}
    no_time = load_interactions(write(tmp_path / "y.csv", "user,item\nu,b\nu,a\n"))
    assert seqs(no_time) == {"u": ["b", "a"]} and any("file" in n for n in no_time.notes)


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    table = pa.table(
        {"user_id": [1, 1, 2], "item_id": ["x", "y", "x"], "time": [3.0, 1.0, 2.0], "r": [1, 5, 5]}
    )
    pq.write_table(table, path)
    ds = load_interactions(path)
    assert ds.format == "parquet" and seqs(ds) == {1: ["y", "x"], 2: ["x"]}
    assert seqs(load_interactions(tmp_path, min_rating=4, rating_col="r")) == {1: ["y"], 2: ["x"]}
    with pytest.raises(DataFormatError) as err:
        load_interactions(path, time_col="when")
    assert err.value.line is None and err.value.column == "when"
    assert "available columns: 'user_id', 'item_id', 'time', 'r'" in str(err.value)
    pq.write_table(pa.table({"user": [1, None], "item": [1, 2]}), tmp_path / "nulls.parquet")
    with pytest.raises(DataFormatError, match=r"column 'user': 1 missing .* values \(first at row 2\)"):
        load_interactions(tmp_path / "nulls.parquet")


def test_sample_name_resolves_to_the_cached_copy(atomic_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from linkedout.samples import cache, resolve_dataset

    fake = types.SimpleNamespace(ml100k=atomic_dir)
    monkeypatch.setattr(cache, "load_samples", lambda tier="small": fake)
    monkeypatch.chdir(atomic_dir.parent)  # no ./ml-100k here
    ds = load_interactions(resolve_dataset("ml-100k"))
    assert ds.format == "atomic" and ds.interactions.n_events == 5


def test_sample_name_not_in_the_cache_is_fetched(
    atomic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from linkedout.samples import fetch, resolve_dataset

    fetched: list[str] = []

    def fake_fetch(tier: str = "small", cache: Path | None = None, *, quiet: bool = False) -> object:
        fetched.append(tier)
        return types.SimpleNamespace(ml100k=atomic_dir)

    monkeypatch.setenv("LINKEDOUT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(fetch, "fetch_samples", fake_fetch)
    monkeypatch.chdir(tmp_path)
    assert resolve_dataset("ml-100k") == atomic_dir and fetched == ["small"]


def test_paths_win_over_sample_names_and_unknown_names_are_refused(
    atomic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from linkedout.samples import resolve_dataset

    monkeypatch.chdir(tmp_path)
    local = write(tmp_path / "ml-100k" / "ml-100k.inter", ATOMIC_INTER).parent
    assert resolve_dataset("ml-100k") == Path("ml-100k") and local.exists()
    assert resolve_dataset(atomic_dir) == atomic_dir
    with pytest.raises(
        FileNotFoundError, match=r"no-such-log: no such file or folder \(and not a sample name: ml-100k"
    ):
        resolve_dataset("no-such-log")


def test_loaders_take_paths_and_never_import_the_fetcher(atomic_dir: Path, tmp_path: Path) -> None:
    """`load_interactions` reads paths only: sample names are resolved by the callers, so reading a log
    never pulls in the pip / apt-get machinery of `linkedout.samples`."""
    code = (
        "import sys; from linkedout.data.formats import load_interactions; "
        f"load_interactions({str(atomic_dir)!r}); "
        "assert 'linkedout.samples' not in sys.modules, sorted(m for m in sys.modules if 'samples' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_interactions(tmp_path / "ml-100k")


def test_detect_format(atomic_dir: Path, tmp_path: Path) -> None:
    assert detect_format(atomic_dir) == "atomic"
    assert detect_format(write(tmp_path / "m" / "u.data", "1\t2\t3\t4\n")) == "movielens"
    assert detect_format(write(tmp_path / "k" / "P_pairs.tsv", "1\t2\n")) == "microlens"
    assert detect_format(write(tmp_path / "c" / "any.csv", "user,item\n1,2\n").parent) == "csv"


def test_item_table_aligned_and_mapping() -> None:
    table = ItemTable.from_columns([3, 1], title=["c", "a"], year=[2001, None])
    assert list(table) == [3, 1] and len(table) == 2 and 1 in table and 2 not in table
    assert table.get(2) is None and table[1] == {"title": "a", "year": None}
    aligned = table.aligned(np.array([1, 2, 3]))
    assert aligned.ids.tolist() == [1, 2, 3] and aligned.column("title") == ["a", None, "c"]


# --- malformed files -------------------------------------------------------------------------------


def bad_inter(tmp_path: Path, body: str, name: str = "ml.inter") -> Path:
    return write(tmp_path / name, "user_id:token\titem_id:token\ttimestamp:float\n" + body)


def located(path: Path, **kwargs) -> DataFormatError:
    with pytest.raises(DataFormatError) as err:
        load_interactions(path, **kwargs)
    return err.value


def test_error_non_numeric_timestamp_names_line_and_column(tmp_path: Path) -> None:
    body = "".join(f"{u}\t{u + 1}\t{u}\n" for u in range(15)) + "9\t9\tabc\n"  # header + 15 rows -> line 17
    path = bad_inter(tmp_path, body)
    err = located(path)
    assert (err.line, err.column) == (17, "timestamp")
    assert str(err) == f"{path}:17: column 'timestamp': could not parse 'abc' as a number"


def test_error_wrong_column_count_counts_blank_lines(tmp_path: Path) -> None:
    err = located(bad_inter(tmp_path, "1\t2\t3\n\n1\t2\n"))
    assert (err.line, err.column) == (4, None)
    assert "expected 3 fields" in err.message and "found 2" in err.message


def test_error_line_numbers_follow_quoted_newlines(tmp_path: Path) -> None:
    path = write(tmp_path / "q.csv", 'user,item,ts,note\n1,2,3,"two\nlines"\n1,3,x,ok\n')
    err = located(path)
    assert (err.line, err.column) == (4, "ts")


@pytest.mark.parametrize(
    ("body", "line", "column", "message"),
    [
        ("1\t2\t\n", 2, "timestamp", "missing value"),
        ("1\t2\t5\n1\t2\tinf\n", 3, "timestamp", "'inf' is not a finite number"),
        ("1\t\t5\n", 2, "item_id", "empty id"),
    ],
)
def test_error_bad_values(tmp_path: Path, body: str, line: int, column: str, message: str) -> None:
    err = located(bad_inter(tmp_path, body))
    assert (err.line, err.column, err.message) == (line, column, message)


def test_error_header_problems(tmp_path: Path) -> None:
    err = located(write(tmp_path / "a.inter", "user_id:token\tfilm:token\ttimestamp:float\n1\t2\t3\n"))
    assert err.line == 1 and "cannot tell which column holds the item ids" in str(err)
    assert "'film:token'" not in str(err) and "'film'" in str(err)  # lists the names without types
    err = located(write(tmp_path / "b.inter", "user_id:token\titem_id:tokn\n1\t2\n"))
    assert (err.line, err.column) == (1, "item_id") and "unknown type 'tokn'" in err.message
    err = located(write(tmp_path / "c.csv", "uid,vid,ts\n1,2,3\n"), user_col="user")
    assert (err.line, err.column) == (1, "user") and "available columns: 'uid', 'vid', 'ts'" in str(err)


def test_error_empty_and_header_only_files(tmp_path: Path) -> None:
    err = located(write(tmp_path / "e.inter", ""))
    assert str(err) == f"{tmp_path / 'e.inter'}: file is empty"
    err = located(write(tmp_path / "w.csv", " \n\n"))
    assert err.message == "file is empty"
    err = located(bad_inter(tmp_path, "", name="h.inter"))
    assert err.line == 2 and "no interactions" in err.message


def test_error_unknown_format_and_missing_file(tmp_path: Path) -> None:
    err = located(write(tmp_path / "log.xyz", "1 2 3\n"))
    assert "unknown format" in err.message
    (tmp_path / "empty_dir").mkdir()
    err = located(tmp_path / "empty_dir")
    assert "unknown format" in err.message and "u.data" in err.message
    err = located(write(tmp_path / "log2.csv", "user,item\n1,2\n"), format="avro")
    assert "unknown format 'avro'" in err.message
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_interactions(tmp_path / "nope.inter")


def test_error_in_metadata_files(tmp_path: Path, atomic_dir: Path) -> None:
    write(atomic_dir / "toy.item", ATOMIC_ITEM + "9\tDuplicate\t1999\tDrama\n")
    err = located(atomic_dir)
    assert (err.path.name, err.line, err.column) == ("toy.item", 5, "item_id")
    assert "already on line 2" in err.message
    folder = tmp_path / "ml"
    write(folder / "u.data", "1\t1\t3\t5\n")
    write(folder / "u.item", U_ITEM.replace("|0|0|0|1|1|1|", "|0|0|0|1|x|1|", 1), encoding="latin-1")
    err = located(folder)
    assert (err.path.name, err.line, err.column) == ("u.item", 1, "genre:Children's")


def test_error_u_data_and_encoding(tmp_path: Path) -> None:
    err = located(write(tmp_path / "m" / "u.data", "1\t2\t3\t4\n1\t2\t3\n"))
    assert (err.line, err.column) == (2, None)
    path = tmp_path / "bad.csv"
    path.write_bytes(b"user,item\n1,2\n1,\xff\xfe\n")
    err = located(path)
    assert err.line == 3 and "utf8" in err.message


@pytest.mark.network
def test_real_ml100k_sample(samples_small) -> None:
    """The fetched MovieLens-100K (RecBole atomic files): the published counts, every user >= 20."""
    ds = load_interactions(samples_small.ml100k)
    inter = ds.interactions
    assert (inter.n_events, inter.n_users, inter.n_items) == (100_000, 943, 1_682)
    assert inter.lengths().min() >= 20
    assert len(ds.item_meta) == 1_682 and ds.item_meta[1]["title"] == "Toy Story"
    assert load_interactions(samples_small.ml100k, min_rating=4).interactions.n_events < 100_000
