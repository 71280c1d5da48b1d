"""Tests for loading, packing, labeling and splitting text datasets."""

import json

import pytest
from datasets import Dataset, DatasetDict

from manticore.tasks.text import (
    load_classification_dataset,
    load_text_dataset,
    pack_for_language_modeling,
    split_dataset,
)
from manticore.tasks.tokenizer import EOS_TOKEN, train_bpe_tokenizer

SENTENCES = [
    "To be, or not to be, that is the question.",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(SENTENCES * 3, vocab_size=300)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# Loading


def test_txt_file_one_document(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text("line one\nline two\n", encoding="utf-8")
    dataset = load_text_dataset(path)
    assert len(dataset) == 1
    assert dataset[0]["text"] == "line one\nline two\n"


def test_txt_file_lines_as_documents(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("first\n\n  \nsecond\nthird\n", encoding="utf-8")
    dataset = load_text_dataset(path, lines_as_documents=True)
    assert list(dataset["text"]) == ["first", "second", "third"]


def test_txt_file_custom_field(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text("words", encoding="utf-8")
    dataset = load_text_dataset(path, text_field="content")
    assert dataset.column_names == ["content"]


def test_txt_folder_sorted_files(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "blank.txt").write_text("\n\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not text data", encoding="utf-8")
    dataset = load_text_dataset(tmp_path)
    assert list(dataset["text"]) == ["first", "second"]


def test_jsonl_rows(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"text": "alpha", "id": 1}, {"text": "beta", "id": 2}])
    dataset = load_text_dataset(path)
    assert len(dataset) == 2
    assert list(dataset["text"]) == ["alpha", "beta"]
    assert "id" in dataset.column_names


def test_json_array_rows(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"body": "alpha"}, {"body": "beta"}, {"body": "gamma"}]), encoding="utf-8")
    dataset = load_text_dataset(path, text_field="body")
    assert list(dataset["body"]) == ["alpha", "beta", "gamma"]


def test_csv_rows(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('text,label\n"comma, inside",a\nplain,b\n', encoding="utf-8")
    dataset = load_text_dataset(path)
    assert len(dataset) == 2
    assert dataset[0]["text"] == "comma, inside"


def test_tsv_rows(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("text\tlabel\nwith, comma\ta\n", encoding="utf-8")
    dataset = load_text_dataset(path)
    assert dataset[0]["text"] == "with, comma"


def test_saved_dataset(tmp_path):
    Dataset.from_dict({"text": ["x", "y", "z"]}).save_to_disk(str(tmp_path / "saved"))
    dataset = load_text_dataset(tmp_path / "saved")
    assert list(dataset["text"]) == ["x", "y", "z"]


def test_saved_dataset_dict_splits(tmp_path):
    splits = DatasetDict(
        train=Dataset.from_dict({"text": ["t1", "t2"]}),
        validation=Dataset.from_dict({"text": ["v1"]}),
    )
    splits.save_to_disk(str(tmp_path / "saved"))
    assert list(load_text_dataset(tmp_path / "saved")["text"]) == ["t1", "t2"]
    assert list(load_text_dataset(tmp_path / "saved", split="validation")["text"]) == ["v1"]


# Loading errors


def test_missing_file_error(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_text_dataset(missing)


def test_unknown_hub_name_error():
    with pytest.raises(FileNotFoundError, match="no_such_corpus.*Hugging Face Hub"):
        load_text_dataset("no_such_corpus")


def test_missing_field_error(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"body": "alpha"}])
    with pytest.raises(ValueError, match=r"'text' not found.*\['body'\]"):
        load_text_dataset(path)


def test_non_string_field_error(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"text": 3}])
    with pytest.raises(ValueError, match="expected strings"):
        load_text_dataset(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.txt", " \n"), ("empty.jsonl", ""), ("header.csv", "text,label\n")],
)
def test_empty_file_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=f"'{path}' contains no documents"):
        load_text_dataset(path)


def test_empty_saved_dataset_error(tmp_path):
    Dataset.from_dict({"text": []}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="contains no documents"):
        load_text_dataset(tmp_path / "saved")


def test_folder_without_txt_error(tmp_path):
    (tmp_path / "notes.md").write_text("words", encoding="utf-8")
    with pytest.raises(ValueError, match="contains no .txt files"):
        load_text_dataset(tmp_path)


def test_unsupported_suffix_error(tmp_path):
    path = tmp_path / "data.xml"
    path.write_text("<a/>", encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported suffix '.xml'"):
        load_text_dataset(path)


def test_split_for_single_file_error(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"text": "alpha"}])
    with pytest.raises(ValueError, match="split='validation'"):
        load_text_dataset(path, split="validation")


def test_unknown_saved_split_error(tmp_path):
    DatasetDict(train=Dataset.from_dict({"text": ["t"]})).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=r"split 'test' not found.*\['train'\]"):
        load_text_dataset(tmp_path / "saved", split="test")


# Packing


def expected_stream(tokenizer, documents):
    stream = []
    for document in documents:
        stream += tokenizer(document, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return stream


def test_pack_exact_blocks(tokenizer):
    documents = SENTENCES[:2]
    stream = expected_stream(tokenizer, documents)
    packed = pack_for_language_modeling(Dataset.from_dict({"text": documents}), tokenizer, block_size=4)
    assert len(packed) == len(stream) // 4
    flat = [token for row in packed["input_ids"] for token in row]
    assert flat == stream[: len(packed) * 4]


def test_pack_labels_equal_inputs(tokenizer):
    packed = pack_for_language_modeling(Dataset.from_dict({"text": SENTENCES}), tokenizer, block_size=8)
    assert list(packed["labels"]) == list(packed["input_ids"])


def test_pack_eos_between_documents(tokenizer):
    documents = ["to be", "or not"]
    first_length = len(tokenizer("to be", add_special_tokens=False)["input_ids"])
    second_length = len(tokenizer("or not", add_special_tokens=False)["input_ids"])
    total = first_length + second_length + 2
    packed = pack_for_language_modeling(Dataset.from_dict({"text": documents}), tokenizer, block_size=total)
    row = packed[0]["input_ids"]
    assert len(packed) == 1
    assert row[first_length] == tokenizer.eos_token_id
    assert row[-1] == tokenizer.eos_token_id
    assert row.count(tokenizer.eos_token_id) == 2
    assert tokenizer.decode(row) == f"to be{EOS_TOKEN}or not{EOS_TOKEN}"


def test_pack_without_eos(tokenizer):
    documents = ["to be", "or not"]
    total = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in documents)
    packed = pack_for_language_modeling(
        Dataset.from_dict({"text": documents}), tokenizer, block_size=total, append_eos=False
    )
    assert tokenizer.eos_token_id not in packed[0]["input_ids"]
    assert tokenizer.decode(packed[0]["input_ids"]) == "to beor not"


def test_pack_drops_remainder(tokenizer):
    stream = expected_stream(tokenizer, SENTENCES)
    block_size = len(stream) // 2 + 1
    packed = pack_for_language_modeling(Dataset.from_dict({"text": SENTENCES}), tokenizer, block_size=block_size)
    assert len(packed) == 1
    assert len(packed[0]["input_ids"]) == block_size


def test_pack_too_few_tokens_error(tokenizer):
    with pytest.raises(ValueError, match=r"tokens, fewer than block_size=10000.*smaller block_size"):
        pack_for_language_modeling(Dataset.from_dict({"text": ["short"]}), tokenizer, block_size=10_000)


def test_pack_invalid_block_size_error(tokenizer):
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        pack_for_language_modeling(Dataset.from_dict({"text": ["short"]}), tokenizer, block_size=0)


def test_pack_missing_eos_error(tokenizer):
    without_eos = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="no eos_token"):
        pack_for_language_modeling(Dataset.from_dict({"text": ["short"]}), without_eos, block_size=1)


# Tokenizer


def test_tokenizer_deterministic():
    first = train_bpe_tokenizer(SENTENCES, vocab_size=300)
    second = train_bpe_tokenizer(SENTENCES, vocab_size=300)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


def test_tokenizer_special_tokens(tokenizer):
    assert tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.bos_token == EOS_TOKEN
    assert tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer("to be")["input_ids"] == tokenizer("to be", add_special_tokens=False)["input_ids"]


def test_tokenizer_small_vocab_error():
    with pytest.raises(ValueError, match="vocab_size=100 is below 258"):
        train_bpe_tokenizer(SENTENCES, vocab_size=100)


# Classification


def test_string_labels_sorted_ids(tmp_path):
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": "pos"}]
    dataset, label_names = load_classification_dataset(write_jsonl(tmp_path / "data.jsonl", rows))
    assert label_names == ["neg", "pos"]
    assert list(dataset["label"]) == [1, 0, 1]
    assert dataset.features["label"].names == ["neg", "pos"]


def test_integer_labels_made_contiguous(tmp_path):
    rows = [{"text": "a", "y": 10}, {"text": "b", "y": 3}, {"text": "c", "y": 10}]
    dataset, label_names = load_classification_dataset(write_jsonl(tmp_path / "data.jsonl", rows), label_field="y")
    assert label_names == ["3", "10"]
    assert list(dataset["y"]) == [1, 0, 1]


def test_missing_label_field_error(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"text": "a", "tag": "x"}])
    with pytest.raises(ValueError, match=r"label field 'label' not found.*'tag'"):
        load_classification_dataset(path)


# Splitting


def numbered_dataset(row_count):
    return Dataset.from_dict({"text": [f"document {index}" for index in range(row_count)]})


def test_split_fractions_cover_rows():
    splits = split_dataset(numbered_dataset(10), {"train": 0.7, "validation": 0.2, "test": 0.1}, seed=3)
    assert {name: len(split) for name, split in splits.items()} == {"train": 7, "validation": 2, "test": 1}
    texts = [text for split in splits.values() for text in split["text"]]
    assert sorted(texts) == sorted(numbered_dataset(10)["text"])


def test_split_rounding_uses_every_row():
    splits = split_dataset(numbered_dataset(7), {"train": 0.5, "validation": 0.25, "test": 0.25})
    assert sum(len(split) for split in splits.values()) == 7


def test_split_disjoint():
    splits = split_dataset(numbered_dataset(50), {"train": None, "validation": 5, "test": 5}, seed=1)
    train, validation, test = (set(splits[name]["text"]) for name in ("train", "validation", "test"))
    assert len(train) == 40
    assert not train & validation
    assert not train & test
    assert not validation & test


def test_split_deterministic():
    sizes = {"train": 0.8, "test": 0.2}
    first = split_dataset(numbered_dataset(30), sizes, seed=7)
    second = split_dataset(numbered_dataset(30), sizes, seed=7)
    other = split_dataset(numbered_dataset(30), sizes, seed=8)
    assert list(first["test"]["text"]) == list(second["test"]["text"])
    assert list(first["test"]["text"]) != list(other["test"]["text"])


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"train": 8, "test": 8}, "need 16 rows"),
        ({"train": 5, "test": 2}, "cover 7 of 10 rows"),
        ({"train": None, "test": None}, "only one split"),
        ({"train": 1.5}, "outside"),
        ({"train": "half"}, "pass a row count"),
        ({}, "sizes is empty"),
    ],
)
def test_split_invalid_sizes_error(sizes, message):
    with pytest.raises(ValueError, match=message):
        split_dataset(numbered_dataset(10), sizes)
