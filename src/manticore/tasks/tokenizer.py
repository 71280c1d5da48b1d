"""Byte-level BPE tokenizer training with the `tokenizers` library."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN]
BYTE_ALPHABET_SIZE = 256


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    output_dir: str | os.PathLike | None = None,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    The vocabulary contains the special tokens ``<|endoftext|>`` (id 0, used as
    BOS, EOS and UNK, as in GPT-2) and ``<|pad|>`` (id 1), then the 256 byte
    symbols, then merges up to ``vocab_size`` entries. The result can be
    smaller when the texts offer too few pairs that occur ``min_frequency``
    times. Encoding adds no special tokens, so callers append EOS themselves.

    The same texts, in the same order, give the same vocabulary and merges.
    When ``output_dir`` is given, the tokenizer is saved there with
    ``save_pretrained`` and loads back with ``AutoTokenizer.from_pretrained``.
    """
    minimum = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is below {minimum}, the 256 byte symbols plus {len(SPECIAL_TOKENS)} "
            f"special tokens: pass vocab_size >= {minimum}"
        )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    logger.info("Trained a byte-level BPE tokenizer with %d tokens", tokenizer.get_vocab_size())

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
    )
    if output_dir is not None:
        wrapped.save_pretrained(str(Path(output_dir)))
        logger.info("Saved the tokenizer to '%s'", output_dir)
    return wrapped
