"""The Manticore hybrid: K pretrained components joined in M gated projector blocks.

Dimension letters: B batch, T sequence length, D shared width (max over
components), d_k width of component k, K components, M blocks, V vocabulary.

Block i, for every component k with gate g = alpha[i, k]:
    u_k = (1 - g) * P_in(h) + g * h[..., :d_k]         # (B, T, d_k)
    y_k = chunk i of component k applied to u_k         # (B, T, d_k)
    z_k = (1 - g) * P_out(y_k) + g * pad_D(y_k)         # (B, T, D)
    h   = sum_k g * z_k                                 # (B, T, D)
A one-hot alpha on component k in every block therefore computes exactly
component k ("exact collapse").
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput

from .components import adapter_for
from .configuration import ManticoreConfig
from .mixture import MixtureWeights, validate_probabilities
from .projectors import Projector, resize_features

logger = logging.getLogger(__name__)


class ManticorePreTrainedModel(PreTrainedModel):
    config_class = ManticoreConfig
    base_model_prefix = "manticore"
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    def __init__(self, config: ManticoreConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.tokenizer = None  # attached by build_hybrid and from_pretrained; saved alongside the weights

    def _init_weights(self, module):
        # Components arrive initialised (pretrained or by their own class) and
        # projectors initialise themselves by kind; nothing is re-initialised here.
        pass

    def post_init(self):
        super().post_init()
        # Components tie their heads to their embeddings by their own configs;
        # the top-level model must know those ties so that save and load keep them.
        self.all_tied_weights_keys = self.get_expanded_tied_weights_keys(all_submodels=True)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Write config, safetensors weights and, when known, the tokenizer into one directory."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        from .build import load_tokenizer

        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model.tokenizer = load_tokenizer(str(pretrained_model_name_or_path))
        return model


class ManticoreModel(ManticorePreTrainedModel):
    """The hybrid up to the last block: token ids -> shared hidden state (B, T, D)."""

    def __init__(self, config: ManticoreConfig, components: list[PreTrainedModel] | None = None):
        super().__init__(config)
        if components is None:
            components = [AutoModelForCausalLM.from_config(config.component_config(k)) for k in range(config.n_components)]
        self.components = nn.ModuleList(components)
        widths = [adapter.width for adapter in self.adapters]
        self.hidden_size = max(widths)
        self.bounds = [self._chunk_bounds(splits) for splits in config.layer_splits]

        kind = config.projector
        self.projectors_in = nn.ModuleList(
            nn.ModuleList(Projector(self.hidden_size, d, kind) for d in widths) for _ in range(config.n_blocks)
        )
        self.projectors_out = nn.ModuleList(
            nn.ModuleList(Projector(d, self.hidden_size, kind) for d in widths) for _ in range(config.n_blocks)
        )
        self.mixture = MixtureWeights(
            config.n_blocks, config.n_components, config.mixture, config.mixture_probs, config.gumbel_tau
        )
        self.post_init()

    @staticmethod
    def _chunk_bounds(splits: list[int]) -> list[tuple[int, int]]:
        starts = [sum(splits[:i]) for i in range(len(splits))]
        return [(start, start + count) for start, count in zip(starts, splits)]

    @property
    def adapters(self):
        return [adapter_for(model) for model in self.components]

    def set_mixture_weights(self, probs) -> None:
        """Install fixed (M, K) probabilities that no optimiser updates."""
        probs = validate_probabilities(probs, self.config.n_blocks, self.config.n_components)
        device = next(self.parameters()).device
        self.mixture = MixtureWeights(self.config.n_blocks, self.config.n_components, "fixed", probs).to(device)
        self.config.mixture = "fixed"
        self.config.mixture_probs = probs.tolist()

    def check_length(self, length: int, alpha: torch.Tensor) -> None:
        """Raise if a component that runs cannot take sequences of `length` tokens."""
        for k, adapter in enumerate(self.adapters):
            if length > adapter.max_context and bool((alpha[:, k] != 0).any()):
                raise ValueError(
                    f"sequence of {length} tokens is longer than the maximum context of component "
                    f"{self.config.component_names[k]!r} ({adapter.max_context} tokens): truncate inputs to "
                    f"{adapter.max_context} tokens, "
                    "or give that component mixture weight 0"
                )

    def new_cache(self) -> "HybridCache":
        """Create an empty decoding state for every component (see `manticore.generation`)."""
        from .generation import HybridCache

        return HybridCache([adapter.new_cache() for adapter in self.adapters])

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        """Run every block; return (h, alpha) with h (B, T, D) and alpha (M, K).

        With a `cache`, `input_ids` are the new tokens only and `attention_mask`
        covers the cached tokens and the new ones, (B, past + T).
        """
        B, T = input_ids.shape
        alpha = self.mixture()
        past = cache.length if cache is not None else 0
        self.check_length(past + T, alpha)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, B, past + T, input_ids.device)[:, -T:]
        adapters = self.adapters
        states = cache.states if cache is not None else [None] * len(adapters)

        # 1. Embed: h_0 = sum_k alpha[0, k] * pad_D(E_k[x])
        h = sum(
            alpha[0, k] * resize_features(adapter.embed(input_ids), self.hidden_size)
            for k, adapter in enumerate(adapters)
        )  # (B, T, D)
        contexts = [
            adapter.prepare(resize_features(h, adapter.width), attention_mask, position_ids, state)
            for adapter, state in zip(adapters, states)
        ]

        # 2. Blocks
        for i in range(self.config.n_blocks):
            h = self._block(i, h, alpha[i].to(h.dtype), adapters, contexts)
        if cache is not None:
            cache.length += T
        return h, alpha

    def _block(self, i, h, gates, adapters, contexts):
        mixed = None
        for k, adapter in enumerate(adapters):
            g = gates[k]
            if not g.requires_grad and float(g) == 0.0:
                continue  # a fixed zero weight removes the component from this block

            # A fixed weight of exactly 1 passes h straight through, so the projectors need not run.
            bypass = not g.requires_grad and float(g) == 1.0

            # 1. project in
            u = resize_features(h, adapter.width)  # (B, T, d_k)
            if not bypass:
                u = (1 - g) * self.projectors_in[i][k](h) + g * u

            # 2. run the chunk
            start, stop = self.bounds[k][i]
            y = adapter.run_layers(u, start, stop, contexts[k])  # (B, T, d_k)

            # 3. project out and mix
            z = resize_features(y, self.hidden_size)  # (B, T, D)
            if not bypass:
                z = (1 - g) * self.projectors_out[i][k](y) + g * z
            mixed = g * z if mixed is None else mixed + g * z
        return mixed if mixed is not None else torch.zeros_like(h)


def positions_from_mask(attention_mask, batch: int, length: int, device) -> torch.Tensor:
    """Position ids that count real tokens only, so left padding does not shift positions."""
    if attention_mask is None:
        return torch.arange(length, device=device).unsqueeze(0).expand(batch, -1)
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # (B, T)


class MixtureWeightsAccess:
    """`mixture_weights` and `set_mixture_weights` for models that wrap a `ManticoreModel` as `.model`."""

    def mixture_weights(self) -> torch.Tensor:
        """alpha (M, K) as probabilities, detached."""
        return self.model.mixture.probabilities().detach().clone()

    def set_mixture_weights(self, probs) -> None:
        self.model.set_mixture_weights(probs)


class ManticoreForCausalLM(MixtureWeightsAccess, ManticorePreTrainedModel, GenerationMixin):
    """Manticore with mixed LM heads: logits = sum_k alpha[M-1, k] * head_k(h[..., :d_k])."""

    def __init__(self, config: ManticoreConfig, components: list[PreTrainedModel] | None = None):
        super().__init__(config)
        self.model = ManticoreModel(config, components)
        self.post_init()
        # transformers' own generation loop cannot drive the hybrid's per-component caches,
        # so it recomputes the prefix; `generate` below uses the caches where it can.
        self.generation_config.use_cache = False

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, cache=None, **kwargs):
        h, alpha = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
        logits = self.mixed_logits(h, alpha[-1].to(h.dtype))  # (B, T, V)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return CausalLMOutput(loss=loss, logits=logits)

    def mixed_logits(self, h, gates):
        """sum_k g_k * head_k(h[..., :d_k]), (B, T, D) -> (B, T, V).

        Linear heads are joined into one matrix product on the gated inputs,
        sum_k W_k (g_k x_k) = [W_1 ... W_K] [g_1 x_1; ...; g_K x_K], so the gates
        scale (B, T, d_k) tensors instead of (B, T, V) logits.
        """
        inputs, weights, biases, other = [], [], [], None
        for k, adapter in enumerate(self.model.adapters):
            g = gates[k]
            if not g.requires_grad and float(g) == 0.0:
                continue
            x = resize_features(h, adapter.width)  # (B, T, d_k)
            head = adapter.lm_head
            if isinstance(head, nn.Linear):
                inputs.append(g * x)
                weights.append(head.weight[: self.vocab_size])  # (V, d_k)
                if head.bias is not None:
                    biases.append(g * head.bias[: self.vocab_size])
            else:
                term = g * adapter.logits(x)[..., : self.vocab_size]
                other = term if other is None else other + term
        logits = F.linear(torch.cat(inputs, -1), torch.cat(weights, 1)) if inputs else None  # (B, T, V)
        if biases:
            logits = logits + sum(biases)
        if other is not None:
            logits = other if logits is None else logits + other
        return logits

    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        """Generate with per-component caches for greedy and sampled decoding.

        Calls with options beyond `manticore.generation.CACHED_OPTIONS` (beam search,
        logits processors, ...), or hybrids with a component that has no cached
        path (Mamba-2), fall back to transformers' `generate`, which recomputes the
        prefix at every step.
        """
        from .generation import cached_generation_supported, generate_with_cache

        if cached_generation_supported(self, kwargs):
            return generate_with_cache(self, input_ids, attention_mask, **kwargs)
        return super().generate(input_ids, attention_mask=attention_mask, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; labels are the inputs, -100 marks positions to skip."""
    shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()  # (B*(T-1), V)
    shifted_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=-100)


class ManticoreForSequenceClassification(MixtureWeightsAccess, ManticorePreTrainedModel):
    """Manticore with a linear classifier on pooled hidden states.

    `config.pooling` is "last" (the last non-pad token) or "mean" (mean over real tokens).
    """

    def __init__(self, config: ManticoreConfig, components: list[PreTrainedModel] | None = None):
        super().__init__(config)
        self.model = ManticoreModel(config, components)
        self.pooling = getattr(config, "pooling", "last")
        if self.pooling not in ("last", "mean"):
            raise ValueError(f"unknown pooling {self.pooling!r}: choose 'last' or 'mean'")
        self.score = nn.Linear(self.model.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        h, _ = self.model(input_ids, attention_mask=attention_mask)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pooled = pool_hidden(h, attention_mask, self.pooling)  # (B, D)
        logits = self.score(pooled)  # (B, num_labels)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def pool_hidden(h: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool (B, T, D) to (B, D) at the last real token or as the mean over real tokens."""
    mask = attention_mask.to(h.dtype)
    if pooling == "mean":
        return (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
    positions = torch.arange(h.shape[1], device=h.device)
    last = (positions * attention_mask.long()).argmax(-1)  # (B,) index of the last real token
    return h[torch.arange(h.shape[0], device=h.device), last]
