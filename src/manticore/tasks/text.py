"""Text datasets for language modeling and classification, built on `datasets`.

`load_text_dataset` reads local files, saved datasets or Hugging Face Hub
datasets into a `datasets.Dataset` with one document per row.
`pack_for_language_modeling` turns those documents into fixed-length token
blocks, and `split_dataset` makes deterministic document-level splits.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset, load_from_disk
from datasets.exceptions import DatasetsError

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
TEXT_SUFFIXES = {".txt"}
STRING_DTYPES = {"string", "large_string"}


def load_text_dataset(
    source: str | os.PathLike,
    text_field: str = "text",
    split: str | None = None,
    lines_as_documents: bool = False,
) -> Dataset:
    """Load documents from a file, a folder or a Hub dataset name.

    Supported sources:

    - a ``.txt`` file: one document per file, or one per non-blank line when
      ``lines_as_documents`` is true;
    - a folder of ``.txt`` files (not searched recursively): one document per
      file, in sorted file-name order, skipping blank files;
    - a JSON Lines or JSON file (``.jsonl``, ``.json``), a CSV or TSV file
      (``.csv``, ``.tsv``) or a Parquet file (``.parquet``);
    - a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``;
    - otherwise, a Hugging Face Hub dataset name, which needs network access.

    For plain text, the documents go in a column named ``text_field``. ``split``
    selects one split of a saved DatasetDict or a Hub dataset (default
    ``"train"``). Single files have only the ``"train"`` split.

    Raises FileNotFoundError for a missing path or an unloadable Hub name, and
    ValueError for a missing or non-string text field or an empty dataset.
    """
    dataset = _load_source(source, text_field, split, lines_as_documents)
    _check_text_column(dataset, text_field, source)
    if len(dataset) == 0:
        raise ValueError(f"data source '{source}' contains no documents: pass a source with at least one row")
    logger.info("Loaded %d documents from '%s'", len(dataset), source)
    return dataset


def _load_source(source, text_field: str, split: str | None, lines_as_documents: bool) -> Dataset:
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_folder(path, text_field, split)
    if path.is_file():
        if split not in (None, "train"):
            raise ValueError(
                f"split='{split}' requested for the single file '{path}', which has only a 'train' split: "
                "pass split=None and use split_dataset to make other splits"
            )
        return _load_file(path, text_field, lines_as_documents)
    if _looks_like_path(str(source)):
        raise FileNotFoundError(f"data path '{source}' not found: pass an existing file or folder")
    return _load_hub_dataset(str(source), split)


def _looks_like_path(source: str) -> bool:
    """Return whether a missing source cannot be a Hub name such as "owner/name"."""
    suffix = Path(source).suffix.lower()
    if suffix in TABLE_SUFFIXES or suffix in TEXT_SUFFIXES:
        return True
    if source.startswith((".", "/", "~")) or "\\" in source:
        return True
    return source.count("/") > 1


def _load_folder(path: Path, text_field: str, split: str | None) -> Dataset:
    if (path / "dataset_dict.json").is_file():
        split_name = _select_split(_saved_split_names(path), split, path)
        return _load_saved_dataset(path / split_name, path)
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        if split not in (None, "train"):
            raise ValueError(f"split='{split}' requested for the saved Dataset '{path}', which has one split: pass split=None")
        return _load_saved_dataset(path, path)

    files = sorted(child for child in path.iterdir() if child.is_file() and child.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise ValueError(
            f"folder '{path}' contains no .txt files and is not a dataset saved with save_to_disk: "
            "pass a folder of .txt files, a saved dataset or a single data file"
        )
    file_texts = [_read_text(file) for file in files]
    documents = [text for text in file_texts if text.strip()]
    if len(documents) < len(file_texts):
        logger.info("Skipped %d blank .txt files in '%s'", len(file_texts) - len(documents), path)
    return _documents_dataset(documents, text_field)


def _saved_split_names(path: Path) -> list[str]:
    with open(path / "dataset_dict.json", encoding="utf-8") as file:
        return list(json.load(file)["splits"])


def _select_split(names: list[str], split: str | None, source) -> str:
    if split is None:
        if "train" in names:
            return "train"
        if len(names) == 1:
            return names[0]
        raise ValueError(f"data source '{source}' has splits {names} and none is 'train': pass split=<one of them>")
    if split not in names:
        raise ValueError(f"split '{split}' not found in '{source}': available splits are {names}")
    return split


def _load_saved_dataset(path: Path, source) -> Dataset:
    # NOTE: datasets 5.2 raises IndexError from load_from_disk when the saved
    # dataset has no rows, because save_to_disk then writes no data files.
    with open(path / "state.json", encoding="utf-8") as file:
        if not json.load(file).get("_data_files"):
            raise ValueError(f"data source '{source}' contains no documents: pass a source with at least one row")
    return load_from_disk(str(path))


def _load_file(path: Path, text_field: str, lines_as_documents: bool) -> Dataset:
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return _load_table_file(path, TABLE_SUFFIXES[suffix])
    if suffix not in TEXT_SUFFIXES:
        supported = sorted(TEXT_SUFFIXES | set(TABLE_SUFFIXES))
        raise ValueError(f"file '{path}' has an unsupported suffix '{suffix}': use one of {supported}")

    text = _read_text(path)
    if lines_as_documents:
        documents = [line for line in text.splitlines() if line.strip()]
    else:
        documents = [text] if text.strip() else []
    return _documents_dataset(documents, text_field)


def _documents_dataset(documents: list[str], text_field: str) -> Dataset:
    # An explicit string type keeps an empty list from becoming a null column.
    return Dataset.from_dict({text_field: documents}, features=Features({text_field: Value("string")}))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"file '{path}' is not valid UTF-8 ({error}): re-encode it as UTF-8") from error


def _load_table_file(path: Path, builder: str) -> Dataset:
    # The datasets 5.2 builders fail with unclear errors on files without rows,
    # so an empty file (or a CSV file with only a header) is caught here.
    lines = [line for line in _read_text(path).splitlines() if line.strip()] if builder != "parquet" else None
    if lines is not None and len(lines) <= (1 if builder == "csv" else 0):
        raise ValueError(f"data source '{path}' contains no documents: pass a file with at least one row")

    try:
        if builder == "json":
            return Dataset.from_json(str(path))
        if builder == "csv":
            return Dataset.from_csv(str(path), sep="\t" if path.suffix.lower() == ".tsv" else ",")
        return Dataset.from_parquet(str(path))
    except (DatasetsError, pa.ArrowInvalid) as error:
        raise ValueError(f"failed to parse '{path}' as {builder} ({error}): check the file contents") from error


def _load_hub_dataset(name: str, split: str | None) -> Dataset:
    try:
        return load_dataset(name, split=split or "train")
    except (OSError, ValueError, DatasetsError) as error:
        raise FileNotFoundError(
            f"data source '{name}' is not a local path and could not be loaded as a Hugging Face Hub dataset "
            f"({type(error).__name__}: {error}); the Hub is unreachable offline, so pass a local file or folder"
        ) from error


def _check_text_column(dataset: Dataset, text_field: str, source) -> None:
    if text_field not in dataset.column_names:
        raise ValueError(
            f"text field '{text_field}' not found in '{source}': columns are {dataset.column_names}; "
            "pass text_field=<one of them>"
        )
    feature = dataset.features[text_field]
    if not isinstance(feature, Value) or feature.dtype not in STRING_DTYPES:
        raise ValueError(f"text field '{text_field}' in '{source}' has type {feature}, expected strings: pass a text column")


def pack_for_language_modeling(
    dataset: Dataset,
    tokenizer,
    block_size: int,
    text_field: str = "text",
    append_eos: bool = True,
) -> Dataset:
    """Tokenize documents, concatenate them and cut the stream into blocks.

    Each document is tokenized without special tokens. With ``append_eos``, the
    tokenizer's EOS token follows every document, including the last. The
    stream is cut into rows of exactly ``block_size`` tokens and the remainder
    is dropped. ``labels`` equals ``input_ids``, because the model shifts
    labels itself. Both columns hold int64 ids.

    The whole token stream is held in memory once as an int64 array.
    """
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    _check_text_column(dataset, text_field, "dataset")
    eos_id = tokenizer.eos_token_id
    if append_eos and eos_id is None:
        raise ValueError("tokenizer has no eos_token: set tokenizer.eos_token or pass append_eos=False")

    stream = _token_stream(dataset, tokenizer, text_field, eos_id if append_eos else None)
    block_count = len(stream) // block_size
    if block_count == 0:
        raise ValueError(
            f"{len(dataset)} documents gave {len(stream)} tokens, fewer than block_size={block_size}: "
            "pass a smaller block_size or more text"
        )
    used = stream[: block_count * block_size]
    blocks = pa.FixedSizeListArray.from_arrays(pa.array(used, type=pa.int64()), block_size)
    logger.info(
        "Packed %d tokens into %d blocks of %d tokens, dropping the last %d",
        len(stream), block_count, block_size, len(stream) - len(used),
    )
    return Dataset(pa.table({"input_ids": blocks, "labels": blocks}))


def _token_stream(dataset: Dataset, tokenizer, text_field: str, eos_id: int | None) -> np.ndarray:
    def tokenize(batch):
        ids = tokenizer(batch[text_field], add_special_tokens=False, verbose=False)["input_ids"]
        if eos_id is not None:
            ids = [document + [eos_id] for document in ids]
        return {"input_ids": ids}

    tokenized = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, desc="Tokenizing")
    # The arrow view follows any row selection, so documents stay in dataset order.
    column = tokenized.with_format("arrow")[:]["input_ids"]
    return np.asarray(pc.list_flatten(column).to_numpy(), dtype=np.int64)


def load_classification_dataset(
    source: str | os.PathLike,
    text_field: str = "text",
    label_field: str = "label",
    split: str | None = None,
) -> tuple[Dataset, list[str]]:
    """Load (text, label) rows and encode the labels as contiguous class ids.

    String labels get ids in sorted order, so ``label_names[i]`` is the label
    of id ``i``. Integer labels that are not already 0..K-1 are mapped the same
    way, sorted numerically. An existing ClassLabel column is kept as is.
    The returned label column is a ClassLabel feature.
    """
    dataset = load_text_dataset(source, text_field=text_field, split=split)
    if label_field not in dataset.column_names:
        raise ValueError(
            f"label field '{label_field}' not found in '{source}': columns are {dataset.column_names}; "
            "pass label_field=<one of them>"
        )
    feature = dataset.features[label_field]
    if isinstance(feature, ClassLabel):
        return dataset, list(feature.names)
    return _encode_labels(dataset, label_field, source)


def _encode_labels(dataset: Dataset, label_field: str, source) -> tuple[Dataset, list[str]]:
    feature = dataset.features[label_field]
    if not isinstance(feature, Value) or not (feature.dtype in STRING_DTYPES or feature.dtype.startswith("int")):
        raise ValueError(f"label field '{label_field}' in '{source}' has type {feature}, expected strings or integers")
    values = dataset.unique(label_field)
    if None in values:
        raise ValueError(f"label field '{label_field}' in '{source}' has missing values: drop or fill those rows")

    sorted_values = sorted(values)
    label_ids = {value: index for index, value in enumerate(sorted_values)}
    label_names = [str(value) for value in sorted_values]
    encoded = dataset.map(
        lambda batch: {label_field: [label_ids[value] for value in batch[label_field]]},
        batched=True,
        desc="Encoding labels",
    )
    encoded = encoded.cast_column(label_field, ClassLabel(names=label_names))
    logger.info("Encoded %d classes in '%s': %s", len(label_names), label_field, label_names)
    return encoded, label_names


def split_dataset(
    dataset: Dataset,
    sizes: Mapping[str, int | float | None],
    seed: int = 0,
) -> DatasetDict:
    """Split rows (documents) into named, disjoint splits in a seeded random order.

    Each value in ``sizes`` is a row count (int), a fraction of the rows
    (float), or None for all remaining rows (at most one split). Fractions
    that sum to 1 are rounded so that every row is used. The splits must cover
    every row. Rows keep their original order inside each split, and the same
    dataset, sizes and seed always give the same splits.
    """
    counts = _split_counts(len(dataset), sizes)
    order = np.random.default_rng(seed).permutation(len(dataset))
    splits = {}
    start = 0
    for name, count in counts.items():
        indices = np.sort(order[start : start + count])
        splits[name] = dataset.select(indices.tolist())
        start += count
    return DatasetDict(splits)


def _split_counts(row_count: int, sizes: Mapping[str, int | float | None]) -> dict[str, int]:
    if not sizes:
        raise ValueError("sizes is empty: pass a mapping such as {'train': 0.9, 'validation': 0.1}")
    rest = [name for name, size in sizes.items() if size is None]
    if len(rest) > 1:
        raise ValueError(f"splits {rest} are all None, but only one split can take the remaining rows")

    counts = {name: _size_to_count(name, size, row_count) for name, size in sizes.items() if size is not None}
    fractions = {name: size for name, size in sizes.items() if isinstance(size, float)}
    if not rest and len(fractions) == len(sizes) and math.isclose(sum(fractions.values()), 1.0):
        _distribute_remainder(counts, fractions, row_count)

    assigned = sum(counts.values())
    if assigned > row_count:
        raise ValueError(f"sizes {dict(sizes)} need {assigned} rows, but the dataset has {row_count}: pass smaller sizes")
    if rest:
        counts[rest[0]] = row_count - assigned
    elif assigned < row_count:
        raise ValueError(
            f"sizes {dict(sizes)} cover {assigned} of {row_count} rows: make them sum to the row count "
            "or give one split the size None to take the rest"
        )
    return {name: counts[name] for name in sizes}


def _size_to_count(name: str, size, row_count: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ValueError(f"size of split '{name}' is {size!r}: pass a row count, a fraction or None")
    if isinstance(size, float):
        if not 0.0 <= size <= 1.0:
            raise ValueError(f"fraction for split '{name}' is {size}, outside [0, 1]: pass a fraction or a row count")
        # The epsilon keeps 0.7 * 10 = 7.000000000000001 and 0.29 * 100 = 28.999999999999996 at 7 and 29.
        return math.floor(size * row_count + 1e-9)
    if size < 0:
        raise ValueError(f"row count for split '{name}' is {size}: pass a count of zero or more")
    return size


def _distribute_remainder(counts: dict[str, int], fractions: dict[str, float], row_count: int) -> None:
    """Give the rows lost to flooring to the splits with the largest remainders."""
    missing = max(row_count - sum(counts.values()), 0)
    by_remainder = sorted(fractions, key=lambda name: fractions[name] * row_count - counts[name], reverse=True)
    for name in by_remainder[:missing]:
        counts[name] += 1
