"""BEIR and STS-B readers: real files load with the published counts; bad lines are
errors that name file and line; queries without judgements are skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e5x.eval import resolve_task
from e5x.formats.benchmark import FormatError, load_beir, load_sts


def _beir(tmp_path: Path, corpus: list[str], queries: list[str], qrels: list[str]) -> Path:
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text("".join(line + "\n" for line in corpus))
    (d / "queries.jsonl").write_text("".join(line + "\n" for line in queries))
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(line + "\n" for line in qrels))
    return d


def _doc(i: str, title: str = "T", text: str = "body") -> str:
    return json.dumps({"_id": i, "title": title, "text": text})


def _q(i: str, text: str = "question") -> str:
    return json.dumps({"_id": i, "text": text})


GOOD_CORPUS = [_doc("d1"), _doc("d2", title="", text="no title")]
GOOD_QUERIES = [_q("q1"), _q("q2"), _q("q3")]


def test_real_scifact_counts(shared_data):
    data = load_beir(shared_data / "scifact", "test")
    assert data.stats == {"documents": 5183, "queries": 300, "judgements": 339}
    assert data.skipped_queries == 809  # the train claims have no test judgements
    assert data.missing_docs == 0
    # title + " " + text, as BEIR/MTEB exact search embeds documents
    first = json.loads((shared_data / "scifact" / "corpus.jsonl").open().readline())
    assert data.corpus_texts[0] == f"{first['title']} {first['text']}".strip()
    train = load_beir(shared_data / "scifact", "train")
    assert (train.stats["queries"], train.skipped_queries) == (809, 300)


def test_real_stsb_counts(shared_data):
    sts = load_sts(shared_data / "sts" / "stsbenchmark", "test")
    assert len(sts.scores) == 1379 and sts.name == "stsbenchmark"
    assert sts.sentences1[0] == "A girl is styling her hair." and sts.scores[0] == 2.5
    assert all(0 <= s <= 5 for s in sts.scores)
    assert any('"' in s for s in sts.sentences1 + sts.sentences2)  # quotes kept verbatim


def test_queries_without_qrels_are_skipped_and_counted(tmp_path):
    d = _beir(tmp_path, GOOD_CORPUS, GOOD_QUERIES, ["q1\td1\t1", "q3\td2\t1", "q3\td9\t1"])
    data = load_beir(d)
    assert data.query_ids == ["q1", "q3"] and data.skipped_queries == 1
    assert data.missing_docs == 1  # d9 is judged but not in the corpus
    assert data.corpus_texts == ["T body", "no title"]


@pytest.mark.parametrize(
    "corpus, line, match",
    [
        ([_doc("d1"), "{not json"], 2, "not valid JSON"),
        ([_doc("d1"), "", json.dumps({"title": "x", "text": "y"})], 3, "missing field '_id'"),
        ([json.dumps({"_id": "d1"})], 1, "missing field 'text'"),
        ([_doc("d1"), _doc("d1")], 2, "duplicate _id 'd1'"),
        (["[1, 2]"], 1, "expected a JSON object"),
        ([json.dumps({"_id": "d1", "text": ["a"]})], 1, "must be a string"),
    ],
)
def test_malformed_corpus_line_names_file_and_line(tmp_path, corpus, line, match):
    d = _beir(tmp_path, corpus, GOOD_QUERIES, ["q1\td1\t1"])
    with pytest.raises(FormatError, match=match) as e:
        load_beir(d)
    assert f"{d / 'corpus.jsonl'}:{line}:" in str(e.value)


def test_malformed_queries_line_names_file_and_line(tmp_path):
    d = _beir(tmp_path, GOOD_CORPUS, [_q("q1"), '{"_id": "q2", "txt": "oops"}'], ["q1\td1\t1"])
    with pytest.raises(FormatError, match=r"queries\.jsonl:2: missing field 'text'"):
        load_beir(d)


@pytest.mark.parametrize(
    "qrels, line, match",
    [
        (["q1\td1"], 2, "expected 3 TAB-separated fields"),
        (["q1\td1\t1", "q2 d2 1"], 3, "expected 3 TAB-separated fields"),
        (["q1\td1\tyes"], 2, "score 'yes' is not a number"),
        (["q1\t\t1"], 2, "empty query-id or corpus-id"),
    ],
)
def test_malformed_qrels_line_names_file_and_line(tmp_path, qrels, line, match):
    d = _beir(tmp_path, GOOD_CORPUS, GOOD_QUERIES, qrels)
    with pytest.raises(FormatError, match=match) as e:
        load_beir(d)
    assert f"{d / 'qrels' / 'test.tsv'}:{line}:" in str(e.value)


def test_empty_corpus_and_other_whole_file_errors(tmp_path):
    with pytest.raises(FormatError, match=r"corpus\.jsonl: the corpus is empty"):
        load_beir(_beir(tmp_path / "a", [], GOOD_QUERIES, ["q1\td1\t1"]))
    with pytest.raises(FormatError, match="no judgements"):
        load_beir(_beir(tmp_path / "b", GOOD_CORPUS, GOOD_QUERIES, []))
    with pytest.raises(FormatError, match="judged query ids are not in"):
        load_beir(_beir(tmp_path / "c", GOOD_CORPUS, GOOD_QUERIES, ["q7\td1\t1"]))
    d = _beir(tmp_path / "d", GOOD_CORPUS, GOOD_QUERIES, ["q1\td1\t1"])
    with pytest.raises(FileNotFoundError, match=r"dev\.tsv not found \(splits with qrels: \['test'\]\)"):
        load_beir(d, "dev")


def test_malformed_sts_lines(tmp_path):
    f = tmp_path / "sts-test.csv"
    f.write_text('g\tf\ty\t1\t3.0\tA "quoted" one.\tB.\textra\tcols\ng\tf\ty\t2\t4.5\tC.\n')
    with pytest.raises(FormatError, match=r"sts-test\.csv:2: expected at least 7 TAB-separated fields"):
        load_sts(f)
    f.write_text("g\tf\ty\t1\tfive\tA.\tB.\n")
    with pytest.raises(FormatError, match=r"sts-test\.csv:1: score 'five' is not a number"):
        load_sts(f)
    f.write_text('g\tf\ty\t1\t3.0\tA "quoted" one.\tB.\textra\tcols\n')
    sts = load_sts(tmp_path)
    assert (sts.sentences1, sts.sentences2, sts.scores) == (['A "quoted" one.'], ["B."], [3.0])
    f.write_text("\n")
    with pytest.raises(FormatError, match="no sentence pairs"):
        load_sts(f)


def test_resolve_task_kinds_and_names(shared_data, tmp_path):
    assert resolve_task(str(shared_data / "scifact"))[:2] == ("SciFact", "Retrieval")
    assert resolve_task(str(shared_data / "sts" / "stsbenchmark"))[:2] == ("STSBenchmark", "STS")
    assert resolve_task(str(shared_data / "sts" / "stsbenchmark" / "sts-dev.csv"), "dev")[:2] == ("STSBenchmark", "STS")
    assert resolve_task(f"MyTask={shared_data / 'scifact'}")[0] == "MyTask"
    with pytest.raises(FileNotFoundError):
        resolve_task(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a task"):
        resolve_task(str(tmp_path))
