"""`ManticoreConfig`: everything needed to rebuild a hybrid without its source checkpoints."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig

from .mixture import MIXTURE_KINDS, validate_probabilities
from .projectors import PROJECTOR_KINDS


def even_layer_splits(depth: int, n_blocks: int, name: str) -> list[int]:
    """Split `depth` layers into `n_blocks` equal chunks, or raise naming the component."""
    if depth % n_blocks:
        raise ValueError(
            f"component {name!r} has {depth} layers, which {n_blocks} blocks cannot split evenly: "
            f"choose a number of blocks that divides {depth}, or pass layer_splits with one list of "
            f"{n_blocks} layer counts per component"
        )
    return [depth // n_blocks] * n_blocks


def check_layer_splits(splits: list[int], depth: int, n_blocks: int, name: str) -> list[int]:
    """Validate one component's explicit per-block layer counts."""
    splits = [int(count) for count in splits]
    if len(splits) != n_blocks or any(count < 0 for count in splits) or sum(splits) != depth:
        raise ValueError(
            f"layer_splits {splits} for component {name!r} is invalid: give {n_blocks} non-negative "
            f"layer counts, one per block, that add up to its depth {depth}"
        )
    return splits


class ManticoreConfig(PreTrainedConfig):
    """Configuration of a Manticore hybrid.

    Args:
        component_configs: one `config.to_dict()` per component, with its `model_type`.
        component_names: where each component came from (hub id or path), for reports.
        n_blocks: M, the number of mixture positions.
        layer_splits: per component, M layer counts; `None` splits every depth evenly.
        projector: projector kind (see `manticore.projectors`).
        mixture: mixture parametrisation (see `manticore.mixture`).
        mixture_probs: (M, K) probabilities, the initial value for learned mixtures and
            the value of a `fixed` one; `None` is uniform.
        gumbel_tau: temperature of the `gumbel` parametrisation.
        fresh_embeddings: per component, whether its embedding and head were replaced by
            fresh ones for the hybrid's tokenizer.
        vocab_size: shared vocabulary of the hybrid's logits.
    """

    model_type = "manticore"

    def __init__(
        self,
        component_configs: list[dict] | None = None,
        component_names: list[str] | None = None,
        n_blocks: int = 1,
        layer_splits: list[list[int]] | None = None,
        projector: str = "linear",
        mixture: str = "softmax",
        mixture_probs: list[list[float]] | None = None,
        gumbel_tau: float = 1.0,
        fresh_embeddings: list[bool] | None = None,
        vocab_size: int | None = None,
        **kwargs,
    ):
        self.component_configs = [dict(c) for c in (component_configs or [])]
        self.component_names = list(component_names or [c.get("_name_or_path", "") for c in self.component_configs])
        self.n_blocks = int(n_blocks)
        self.projector = projector
        self.mixture = mixture
        self.mixture_probs = mixture_probs
        self.gumbel_tau = float(gumbel_tau)
        self.fresh_embeddings = list(fresh_embeddings or [False] * len(self.component_configs))
        self.vocab_size = vocab_size
        self.layer_splits = layer_splits
        super().__init__(**kwargs)
        if self.component_configs:
            self.validate_hybrid()

    def component_config(self, index: int) -> PreTrainedConfig:
        """Rebuild component `index`'s own config object."""
        data = dict(self.component_configs[index])
        return AutoConfig.for_model(data.pop("model_type"), **data)

    @property
    def n_components(self) -> int:
        return len(self.component_configs)

    def validate_hybrid(self) -> None:
        """Check the hybrid-level fields and resolve `layer_splits`."""
        if self.n_blocks < 1:
            raise ValueError(f"n_blocks={self.n_blocks} is invalid: a hybrid needs at least one block")
        if self.projector not in PROJECTOR_KINDS:
            raise ValueError(f"unknown projector kind {self.projector!r}: choose one of {', '.join(PROJECTOR_KINDS)}")
        if self.mixture not in MIXTURE_KINDS:
            raise ValueError(f"unknown mixture parametrisation {self.mixture!r}: choose one of {', '.join(MIXTURE_KINDS)}")
        if self.mixture_probs is not None:
            probs = validate_probabilities(self.mixture_probs, self.n_blocks, self.n_components)
            self.mixture_probs = probs.tolist()
        if len(self.fresh_embeddings) != self.n_components:
            raise ValueError(
                f"fresh_embeddings has {len(self.fresh_embeddings)} entries for {self.n_components} components: "
                "give one boolean per component"
            )
        self.layer_splits = self._resolved_layer_splits()

    def _resolved_layer_splits(self) -> list[list[int]]:
        depths = [self.component_config(k).num_hidden_layers for k in range(self.n_components)]
        if self.layer_splits is None:
            return [even_layer_splits(d, self.n_blocks, n) for d, n in zip(depths, self.component_names)]
        if len(self.layer_splits) != self.n_components:
            raise ValueError(
                f"layer_splits has {len(self.layer_splits)} entries for {self.n_components} components: "
                "give one list of per-block layer counts per component"
            )
        return [
            check_layer_splits(s, d, self.n_blocks, n)
            for s, d, n in zip(self.layer_splits, depths, self.component_names)
        ]
