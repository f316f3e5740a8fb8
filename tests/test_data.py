import shutil

import pytest

from qlib import data


def test_bundle_files_verify():
    paths = data.verify_all()
    assert set(paths) == set(data.MANIFEST)
    assert all(p.is_file() for p in paths.values())


def test_env_var_takes_precedence(tmp_path, monkeypatch):
    source = data.data_path("webshop/goal_query_map.json")
    (tmp_path / "webshop").mkdir()
    shutil.copy(source, tmp_path / "webshop" / "goal_query_map.json")
    monkeypatch.setenv("QLIB_DATA", str(tmp_path))
    assert data.candidate_dirs()[0] == tmp_path
    assert data.data_path("webshop/goal_query_map.json") == tmp_path / "webshop" / "goal_query_map.json"


def test_corrupted_copy_is_rejected_with_checksum(tmp_path, monkeypatch):
    source = data.data_path("webshop/goal_query_map.json")
    (tmp_path / "webshop").mkdir()
    copy = tmp_path / "webshop" / "goal_query_map.json"
    shutil.copy(source, copy)
    with open(copy, "ab") as handle:
        handle.write(b" ")
    monkeypatch.setenv("QLIB_DATA", str(tmp_path))
    with pytest.raises(data.DataBundleError) as err:
        data.data_path("webshop/goal_query_map.json")
    message = str(err.value)
    assert "corrupt" in message and data.MANIFEST["webshop/goal_query_map.json"] in message
    assert str(copy) in message


def test_missing_bundle_names_file_places_and_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("QLIB_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DataBundleError) as err:
        data.data_path("hotpotqa/hotpot_wiki_paragraphs.jsonl.gz")
    message = str(err.value)
    assert "hotpotqa/hotpot_wiki_paragraphs.jsonl.gz" in message
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "data") in message
    assert data.MANIFEST["hotpotqa/hotpot_wiki_paragraphs.jsonl.gz"] in message


def test_unknown_file_is_refused():
    with pytest.raises(data.DataBundleError, match="not a bundle file"):
        data.data_path("webshop/items_shuffle.json")


def test_readers_decode_gzip_and_json():
    first = next(data.iter_jsonl("webshop/webshop_1k_documents.jsonl.gz"))
    assert set(first) == {"id", "contents", "product"}
    assert len(data.read_json("webshop/items_ins_v2_1000.json")) == 1000
