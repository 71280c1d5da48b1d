"""`build_hybrid`: load components, settle the tokenizer, and assemble a Manticore model."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .components import adapter_class_for, adapter_for
from .configuration import ManticoreConfig
from .modeling import ManticoreForCausalLM, ManticoreForSequenceClassification

logger = logging.getLogger(__name__)

FRESH_INIT_STD = 0.02


def load_component(source, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load one causal LM from a model object, a local directory or a hub id.

    Raises:
        FileNotFoundError: a path-like source that does not exist.
        ValueError: a model of a family without an adapter.
        OSError: a hub id that cannot be loaded (for example offline).
    """
    if isinstance(source, PreTrainedModel):
        model = source
    else:
        model = _load_pretrained(str(source), dtype)
    adapter_class_for(model.config.model_type)  # raises for unknown families
    if model.config.model_type == "mamba":
        # The unmodified layer (used when the fused kernel is unavailable) takes mambapy's parallel scan.
        model.config.use_mambapy = True
        for layer in model.backbone.layers:
            layer.mixer.use_mambapy = True
    return model


def _load_pretrained(source: str, dtype: torch.dtype) -> PreTrainedModel:
    path = Path(source).expanduser()
    if path.exists():
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise FileNotFoundError(f"component path {source!r} not found: pass an existing model directory or a hub id")
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as error:
        raise OSError(
            f"component {source!r} is not a local directory and could not be loaded from the hub ({error}): "
            "offline, pass a directory written by save_pretrained"
        ) from error


def load_tokenizer(source) -> PreTrainedTokenizerBase | None:
    """Load the tokenizer saved with a component; return None when there is none."""
    if isinstance(source, PreTrainedTokenizerBase):
        return source
    if isinstance(source, PreTrainedModel):
        source = source.name_or_path
    if not source:
        return None
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as error:
        logger.info("no tokenizer found for %s (%s)", source, error)
        return None


def same_vocabulary(first: PreTrainedTokenizerBase, second: PreTrainedTokenizerBase) -> bool:
    return first.get_vocab() == second.get_vocab()


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def resolve_fresh_embeddings(names, tokenizers, tokenizer, fresh_embeddings) -> list[bool]:
    """Decide, per component, whether it gets fresh embeddings for the hybrid's tokenizer.

    Raises:
        ValueError: components use different tokenizers and no fresh embeddings were requested.
    """
    n = len(names)
    if fresh_embeddings is True:
        return [True] * n
    if isinstance(fresh_embeddings, (list, tuple)):
        if len(fresh_embeddings) != n:
            raise ValueError(f"fresh_embeddings has {len(fresh_embeddings)} entries for {n} components: give one per component")
        return [bool(flag) for flag in fresh_embeddings]
    mismatched = [
        k for k, own in enumerate(tokenizers) if own is not None and tokenizer is not None and not same_vocabulary(own, tokenizer)
    ]
    if fresh_embeddings == "mismatched":
        return [k in mismatched for k in range(n)]
    if fresh_embeddings not in (False, None):
        raise ValueError(f"fresh_embeddings={fresh_embeddings!r} is invalid: pass False, True, 'mismatched' or one bool per component")
    if mismatched:
        k = mismatched[0]
        raise ValueError(
            f"component {names[k]!r} uses tokenizer {_tokenizer_name(tokenizers[k])!r}, which differs from "
            f"{_tokenizer_name(tokenizer)!r}: pass tokenizer=<one of them> with fresh_embeddings='mismatched' "
            "to give the other components fresh embeddings, or fresh_embeddings=True for all"
        )
    return [False] * n


def install_fresh_embeddings(model: PreTrainedModel, vocab_size: int) -> None:
    """Replace a component's embedding and LM head by fresh, tied ones of `vocab_size` rows, N(0, 0.02)."""
    width = model.config.hidden_size
    embedding = nn.Embedding(vocab_size, width)
    nn.init.normal_(embedding.weight, std=FRESH_INIT_STD)
    head = nn.Linear(width, vocab_size, bias=False)
    head.weight = embedding.weight
    model.set_input_embeddings(embedding)
    model.set_output_embeddings(head)
    model.config.vocab_size = vocab_size
    model.config.tie_word_embeddings = True


def build_hybrid(
    components,
    n_blocks: int = 1,
    *,
    tokenizer=None,
    fresh_embeddings=False,
    layer_splits=None,
    projector: str = "linear",
    mixture: str = "softmax",
    mixture_probs=None,
    gumbel_tau: float = 1.0,
    task: str = "causal_lm",
    num_labels: int = 2,
    pooling: str = "last",
    dtype: torch.dtype = torch.float32,
):
    """Build a Manticore hybrid from K >= 1 components.

    Args:
        components: models, local directories or hub ids of causal LMs.
        n_blocks: M, the number of mixture positions.
        tokenizer: the hybrid's tokenizer: a tokenizer, a path, or the index of the
            component whose tokenizer to use; defaults to the first component's.
        fresh_embeddings: False reuses every pretrained embedding and head (all
            components must share a tokenizer); True gives every component fresh ones;
            "mismatched" gives fresh ones to components whose tokenizer differs from
            `tokenizer`; or one bool per component.
        layer_splits: per component, M layer counts; None splits evenly.
        projector, mixture, mixture_probs, gumbel_tau: see `ManticoreConfig`.
        task: "causal_lm" or "classification" (with `num_labels` and `pooling`).

    Returns:
        `ManticoreForCausalLM` or `ManticoreForSequenceClassification`, with the
        tokenizer attached as `.tokenizer` when one is known.
    """
    components = list(components)
    if not components:
        raise ValueError("no components given: pass at least one model, directory or hub id")
    names = [
        (c.name_or_path or f"{c.config.model_type}-{k}") if isinstance(c, PreTrainedModel) else str(c)
        for k, c in enumerate(components)
    ]
    models = [load_component(c, dtype) for c in components]
    own_tokenizers = [load_tokenizer(c) for c in components]
    hybrid_tokenizer = _choose_tokenizer(tokenizer, own_tokenizers)
    fresh = resolve_fresh_embeddings(names, own_tokenizers, hybrid_tokenizer, fresh_embeddings)
    vocab_size = _shared_vocab_size(models, fresh, hybrid_tokenizer)

    config = ManticoreConfig(
        component_configs=[m.config.to_dict() for m in models],
        component_names=names,
        n_blocks=n_blocks,
        layer_splits=layer_splits,
        projector=projector,
        mixture=mixture,
        mixture_probs=mixture_probs,
        gumbel_tau=gumbel_tau,
        fresh_embeddings=fresh,
        vocab_size=vocab_size,
        num_labels=num_labels,
        pooling=pooling,
        pad_token_id=getattr(hybrid_tokenizer, "pad_token_id", None),
        eos_token_id=getattr(hybrid_tokenizer, "eos_token_id", None),
        bos_token_id=getattr(hybrid_tokenizer, "bos_token_id", None),
    )
    model_class = {"causal_lm": ManticoreForCausalLM, "classification": ManticoreForSequenceClassification}.get(task)
    if model_class is None:
        raise ValueError(f"unknown task {task!r}: choose 'causal_lm' or 'classification'")
    hybrid = model_class(config, components=models)
    hybrid.tokenizer = hybrid_tokenizer
    logger.info("built a %d-block hybrid of %s", n_blocks, ", ".join(names))
    return hybrid


def _choose_tokenizer(tokenizer, own_tokenizers):
    if isinstance(tokenizer, int):
        if not 0 <= tokenizer < len(own_tokenizers) or own_tokenizers[tokenizer] is None:
            raise ValueError(f"tokenizer={tokenizer} names no component with a saved tokenizer: pass a tokenizer or its path")
        return own_tokenizers[tokenizer]
    if tokenizer is not None:
        chosen = load_tokenizer(tokenizer)
        if chosen is None:
            raise ValueError(f"tokenizer {tokenizer!r} could not be loaded: pass a tokenizer object or a directory with tokenizer files")
        return chosen
    return next((t for t in own_tokenizers if t is not None), None)


def _shared_vocab_size(models, fresh, tokenizer) -> int:
    """Install fresh embeddings where requested and return the hybrid's vocabulary size.

    Components that share a tokenizer may pad their vocabularies to different
    sizes; the hybrid keeps the smallest, which still covers every token id.
    """
    if any(fresh):
        if tokenizer is None:
            raise ValueError("fresh embeddings need a tokenizer: pass tokenizer=<tokenizer or path>")
        for model, is_fresh in zip(models, fresh):
            if is_fresh:
                install_fresh_embeddings(model, len(tokenizer))
    vocab_size = min(adapter_for(m).vocab_size for m in models)
    if tokenizer is not None and vocab_size < len(tokenizer):
        raise ValueError(
            f"a component's vocabulary of {vocab_size} rows is smaller than its tokenizer's {len(tokenizer)} tokens: "
            "pass fresh_embeddings=True or a matching tokenizer"
        )
    return vocab_size
