"""Public datasets as training triples (e5x.data.convert, `e5x convert`): real SciFact and
STS-B files, and small hand-made tables for the formats and the errors."""

from __future__ import annotations

import json

import polars as pl
import pytest
from e5x.cli import main as cli
from e5x.data.convert import beir_triples, sts_triples, table_triples
from e5x.data.triples import COLUMNS, DataError, Source, read_source, write_triples
from e5x.formats.benchmark import FormatError

SCIFACT_INSTRUCTION = "Given a scientific claim, retrieve documents that support or refute the claim"


def test_beir_train_qrels_of_real_scifact_in_file_order(shared_data):
    root = shared_data / "scifact"
    queries = {(o := json.loads(line))["_id"]: o["text"] for line in (root / "queries.jsonl").read_text().splitlines()}
    docs = {}
    for line in (root / "corpus.jsonl").read_text().splitlines():
        o = json.loads(line)
        docs[str(o["_id"])] = f"{o['title']} {o['text']}".strip()
    pairs = [line.split("\t") for line in (root / "qrels" / "train.tsv").read_text().splitlines()[1:]]

    triples = beir_triples(root, "train")
    assert triples.columns == list(COLUMNS)
    assert triples["query"].to_list() == [queries[q] for q, _, _ in pairs]
    assert triples["positive"].to_list() == [docs[d] for _, d, _ in pairs]
    assert set(triples["instruction"]) == {SCIFACT_INSTRUCTION}  # found from the folder's name
    assert triples["negative"].null_count() == 919 and set(triples["source"]) == {"scifact"}
    own = beir_triples(root, "test", instruction="find evidence", source="sf-test")
    assert own.height == 339 and set(own["instruction"]) == {"find evidence"} and set(own["source"]) == {"sf-test"}


def _beir(tmp_path, qrels: str, corpus=None, queries=None):
    root = tmp_path / "mini"
    (root / "qrels").mkdir(parents=True)
    corpus = corpus or [{"_id": "d1", "title": "T1", "text": "one"}, {"_id": "d2", "title": "", "text": "two"},
                        {"_id": "d3", "text": "three"}]  # fmt: skip
    queries = queries or [{"_id": "q1", "text": "first?"}, {"_id": "q2", "text": "second?"}]
    (root / "corpus.jsonl").write_text("".join(json.dumps(o) + "\n" for o in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(o) + "\n" for o in queries))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return root


def test_beir_scores_documents_and_errors(tmp_path):
    root = _beir(tmp_path, "q1\td1\t2\nq1\td2\t1\nq2\td3\t0\nq2\td2\t2\n")
    t = beir_triples(root)
    # score 0 is not a positive; the generic retrieval instruction for an unknown folder name
    assert list(zip(t["query"], t["positive"], strict=True)) == [
        ("first?", "T1 one"),
        ("first?", "two"),
        ("second?", "two"),
    ]
    assert set(t["instruction"]) == {"Given a query, retrieve relevant documents that answer the query"}
    assert beir_triples(root, min_score=2)["positive"].to_list() == ["T1 one", "two"]
    with pytest.raises(DataError, match="no judgement scored >= 3"):
        beir_triples(root, min_score=3)
    with pytest.raises(FileNotFoundError, match=r"dev\.tsv not found \(splits with qrels: \['train'\]\)"):
        beir_triples(root, "dev")

    missing_doc = _beir(tmp_path / "a", "q1\td1\t1\nq2\td9\t1\n")
    with pytest.raises(
        DataError, match=r"train\.tsv: judgement 2 \('q2', 'd9'\): document 'd9' is not in .*corpus\.jsonl"
    ):
        beir_triples(missing_doc)
    missing_query = _beir(tmp_path / "b", "q7\td1\t1\n")
    with pytest.raises(DataError, match=r"judgement 1 \('q7', 'd1'\): query 'q7' is not in .*queries\.jsonl"):
        beir_triples(missing_query)
    empty_query = _beir(tmp_path / "c", "q1\td1\t1\n", queries=[{"_id": "q1", "text": "  "}])
    with pytest.raises(DataError, match="the query text is empty"):
        beir_triples(empty_query)
    broken = _beir(tmp_path / "d", "q1\td1\t1\n")
    with (broken / "corpus.jsonl").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(FormatError, match=r"corpus\.jsonl:4: not valid JSON"):
        beir_triples(broken)


def test_sts_pairs_above_the_score(shared_data):
    path = shared_data / "sts" / "stsbenchmark"
    rows = [p for line in (path / "sts-train.csv").read_text().splitlines() if len(p := line.split("\t")) >= 7]
    for min_score in (4.0, 5.0):
        high = [p for p in rows if float(p[4]) >= min_score]
        t = sts_triples(path, min_score=min_score)
        assert t["query"].to_list() == [p[5] for p in high] and t["positive"].to_list() == [p[6] for p in high]
    assert set(t["instruction"]) == {"Retrieve semantically similar text."} and set(t["task_type"]) == {"sts"}
    assert sts_triples(path / "sts-dev.csv", instruction="x")["instruction"].unique().to_list() == ["x"]
    with pytest.raises(DataError, match="no pair scored >= 6"):
        sts_triples(path, min_score=6)


def test_tables_in_every_format_give_the_same_triples(tmp_path):
    rows = [{"anchor": 'a "quoted", query', "pos": "p1", "neg": "n1", "task": "t1"},
            {"anchor": "q2", "pos": "p2", "neg": "", "task": "t2"}]  # fmt: skip
    df = pl.DataFrame(rows)
    paths = {"parquet": tmp_path / "t.parquet", "jsonl": tmp_path / "t.jsonl", "csv": tmp_path / "t.csv",
             "tsv": tmp_path / "t.tsv"}  # fmt: skip
    df.write_parquet(paths["parquet"])
    df.write_ndjson(paths["jsonl"])
    df.write_csv(paths["csv"])
    paths["tsv"].write_text(
        "anchor\tpos\tneg\ttask\n" + "".join(f"{r['anchor']}\t{r['pos']}\t{r['neg']}\t{r['task']}\n" for r in rows)
    )
    for fmt, path in paths.items():
        t, dropped = table_triples(path, query="anchor", positive="pos", negative="neg", instruction_column="task")
        assert dropped == 0, fmt
        assert t["query"].to_list() == ['a "quoted", query', "q2"], fmt
        assert t["positive"].to_list() == ["p1", "p2"] and t["instruction"].to_list() == ["t1", "t2"], fmt
        assert t["negative"].to_list() == ["n1", None], fmt  # an empty negative is "none"
        assert set(t["source"]) == {"t"}, fmt
    same, _ = table_triples(df, query="anchor", positive="pos", instruction="one for all", source="s")
    assert same["instruction"].to_list() == ["one for all"] * 2 and same["negative"].null_count() == 2


def test_table_errors_name_the_row_and_column(tmp_path):
    df = pl.DataFrame({"q": ["a", "b", None, "d"], "p": ["x", "", "z", "w"], "n": [1, 2, 3, 4]})
    with pytest.raises(DataError, match=r"table: row 2: column 'q' \(query\) is empty or null \(1 such rows"):
        table_triples(df, query="q", positive="p")
    t, dropped = table_triples(df, query="q", positive="p", drop_empty=True)
    assert dropped == 2 and t["query"].to_list() == ["a", "d"]
    with pytest.raises(DataError, match=r"no column for positive='pos', negative='neg' \(columns: \['q', 'p', 'n'\]\)"):
        table_triples(df, query="q", positive="pos", negative="neg")
    with pytest.raises(DataError, match=r"column 'n' \(negative\) must hold strings, got Int64"):
        table_triples(df, query="q", positive="p", negative="n")
    with pytest.raises(ValueError, match="instruction or instruction_column"):
        table_triples(df, query="q", positive="p", instruction="i", instruction_column="q")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "positive": "b"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: not a readable jsonl file"):
        table_triples(bad)
    with pytest.raises(DataError, match=r"unknown table format '\.xlsx'"):
        (tmp_path / "t.xlsx").write_text("x")
        table_triples(tmp_path / "t.xlsx")


def test_converted_triples_are_what_training_reads(shared_data, tmp_path):
    out = tmp_path / "deep" / "scifact.parquet"
    assert write_triples(beir_triples(shared_data / "scifact"), out) == 919
    assert not list(out.parent.glob("*.tmp"))
    read = read_source(Source(str(out)))
    assert read.height == 919 and read["instruction"].n_unique() == 1 and read["negative"].null_count() == 919


def test_cli_convert(shared_data, tmp_path, capsys):
    out = tmp_path / "sts.parquet"
    assert cli(["convert", "sts", str(shared_data / "sts" / "stsbenchmark"), "--min-score", "4.5", "-o", str(out),
                "--source", "stsb"]) == 0  # fmt: skip
    written = pl.read_parquet(out)
    assert f"wrote {out}: {written.height} triples (0 with a hard negative)" in capsys.readouterr().out
    assert set(written["source"]) == {"stsb"} and written.height == sts_triples(shared_data / "sts" / "stsbenchmark",
                                                                                min_score=4.5).height  # fmt: skip

    table = tmp_path / "pairs.jsonl"
    table.write_text('{"a": "q1", "b": "p1", "c": "n1"}\n{"a": "q2", "b": " ", "c": null}\n')
    out2 = tmp_path / "pairs.parquet"
    assert cli(["convert", "table", str(table), "--query", "a", "--positive", "b", "-o", str(out2)]) == 2
    assert "row 1: column 'b' (positive) is empty or null" in capsys.readouterr().err and not out2.exists()
    assert (
        cli(["convert", "table", str(table), "--query", "a", "--positive", "b", "--drop-empty", "-o", str(out2)]) == 0
    )
    assert "note: no instruction" in capsys.readouterr().out
    assert cli(["convert", "table", str(table), "--query", "a", "--positive", "b", "--negative", "c",
                "--instruction", "find it", "--drop-empty", "-o", str(out2)]) == 0  # fmt: skip
    assert "1 triples (1 with a hard negative; dropped 1 rows" in capsys.readouterr().out
    assert pl.read_parquet(out2).row(0) == ("find it", "q1", "p1", "n1", None, None, None, "pairs")
