"""Settings of the slot aggregator (Slot Attention and its BO-QSA variant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from featcache.config import saved_before
from featcache.errors import ConfigError

#: How the initial slots are drawn; see ``AggregatorConfig.queries``.
QueryKind = Literal["per_slot_gaussian", "per_slot_mean", "shared_gaussian", "learned"]

#: ``straight_through`` each aggregator name stands for when it is left unset.
NAME_STRAIGHT_THROUGH: dict[str, bool] = {"slot_attention": False, "bo_qsa": True}


@dataclass(frozen=True)
class AggregatorConfig:
    """Slot Attention settings; every default is the official VVO code's (object_centric_bench/model/ocl.py
    SlotAttention + NormalSeparat, config-vqdino/vqdino_*_r-coco.py), DINOv2 ViT-S/14 on COCO.

    The name says whether the last iteration is straight-through (``straight_through`` overrides it); the initial
    slots are ``queries``. VVO's "BO-QSA" is Gaussian per-slot queries plus the straight-through step (the
    defaults), the BO-QSA paper's is ``queries: learned``, plain Slot Attention is ``name: slot_attention``.
    """

    #: ``bo_qsa``: the last iteration is straight-through to the initial slots (BO-QSA's bi-level step, VVO's
    #: trunc_bp "bi-level"); ``slot_attention``: plain Slot Attention (VVO's trunc_bp None).
    name: Literal["slot_attention", "bo_qsa"] = "bo_qsa"
    #: Number of slots S (COCO 7, VOC 6, ClevrTex 11).
    num_slots: int = 7
    #: Slot width D.
    slot_dim: int = 256
    #: Attention-GRU-MLP refinement rounds.
    iterations: int = 3
    #: Hidden width of the residual slot MLP.
    mlp_hidden: int = 1024
    #: Small constant of the renormalisation over inputs (see ``renormalisation``): VVO 1e-5, OCLF/videosaur 1e-8.
    epsilon: float = 1e-5
    #: How the softmax-over-slots attention is renormalised over inputs: ``add_epsilon``: (a + eps) / sum(a + eps)
    #: (original Slot Attention, OCLF, videosaur); ``epsilon_in_denominator``: a / (sum(a) + eps) (VVO).
    renormalisation: Literal["add_epsilon", "epsilon_in_denominator"] = "epsilon_in_denominator"
    #: Initial slots. ``per_slot_gaussian``: a learned mean and a learned per-dimension log-std for each slot (VVO NormalSeparat);
    #: ``per_slot_mean``: a learned mean for each slot and one learned per-dimension log-std shared by the slots;
    #: ``shared_gaussian``: one learned mean and log-std for all slots (original Slot Attention, OCLF, videosaur);
    #: ``learned``: deterministic learned queries (BO-QSA paper). The Gaussian kinds add noise (see ``query_noise``).
    queries: QueryKind = "per_slot_gaussian"
    #: Initial query means (or learned queries): ``normal``: N(0, 1/D); ``xavier_uniform``: Glorot-uniform over
    #: the (S, D) matrix, or the (1, 1, D) shared mean (VVO, OCLF); ``zeros``: zero mean (videosaur).
    query_mean_init: Literal["normal", "xavier_uniform", "zeros"] = "xavier_uniform"
    #: Initial std of the Gaussian queries: ``inverse_sqrt_dim``: D^-0.5 (VVO, videosaur; the scale of the means);
    #: ``one``: 1 (featcache before issue 12); ``xavier_uniform``: log-std Glorot-uniform over (1, 1, D), std ~1 (OCLF).
    query_std_init: Literal["inverse_sqrt_dim", "one", "xavier_uniform"] = "inverse_sqrt_dim"
    #: When the Gaussian queries are sampled: ``train``: in training only, evaluation starts at the means (VVO
    #: NormalSeparat); ``always``: in evaluation too (OCLF, videosaur, VVO NormalShared).
    query_noise: Literal["train", "always"] = "train"
    #: Straight-through last iteration (BO-QSA's bi-level step): unset = the name's choice.
    straight_through: bool | None = None
    #: Activation of the residual slot MLP (VVO: gelu; original, OCLF, videosaur: relu).
    mlp_activation: Literal["relu", "gelu"] = "gelu"
    #: Dropout after the slot MLP's activation, in training (VVO: 0.01; fused-seed training needs 0).
    mlp_dropout: float = 0.01
    #: Hidden state the GRU updates: ``slots`` (original, VVO, OCLF) or ``normed_slots``, the slots after the
    #: query LayerNorm (videosaur's grouper).
    gru_hidden: Literal["slots", "normed_slots"] = "slots"
    #: Initial weights of the query/key/value projections: ``torch`` (PyTorch's Linear default: VVO, OCLF,
    #: videosaur) or ``xavier_uniform`` (Glorot, as the original TensorFlow Slot Attention).
    qkv_init: Literal["torch", "xavier_uniform"] = "torch"
    #: Initial biases: ``torch`` (PyTorch defaults); ``zero_mlp``: the slot MLP's biases zero (OCLF, videosaur);
    #: ``zero``: the slot MLP's and the GRU's biases zero (VVO's reset_parameters).
    bias_init: Literal["torch", "zero_mlp", "zero"] = "zero"

    def __post_init__(self) -> None:
        for name in ("num_slots", "slot_dim", "iterations", "mlp_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key 'aggregator.{name}' must be at least 1, got {getattr(self, name)}")
        if self.epsilon < 0:
            raise ConfigError(f"config key 'aggregator.epsilon' must not be negative, got {self.epsilon}")
        if not 0.0 <= self.mlp_dropout < 1.0:
            raise ConfigError(f"config key 'aggregator.mlp_dropout' must lie in [0, 1), got {self.mlp_dropout}")
        if self.queries == "learned" and self.query_mean_init == "zeros":
            raise ConfigError(
                "config key 'aggregator.query_mean_init' 'zeros' gives noise-free learned queries identical slots; "
                "use normal or xavier_uniform"
            )

    @property
    def resolved_straight_through(self) -> bool:
        """``straight_through``, or the name's choice when it is unset."""
        return self.straight_through if self.straight_through is not None else NAME_STRAIGHT_THROUGH[self.name]


#: Before issue 12 (featcache 0.1.0 runs): ``slot_attention`` had per-slot means N(0, 1/D) with a shared log-std 0
#: (training noise of std 1), ``bo_qsa`` deterministic queries N(0, 1/D); both ReLU, (a + eps) / sum, PyTorch's
#: default initialisation.
saved_before(
    AggregatorConfig,
    lambda saved: {
        "queries": "per_slot_mean" if saved.get("name") == "slot_attention" else "learned",
        "query_mean_init": "normal",
        "query_std_init": "one",
        "renormalisation": "add_epsilon",
        "query_noise": "train",
        "mlp_activation": "relu",
        "mlp_dropout": 0.0,
        "gru_hidden": "slots",
        "qkv_init": "torch",
        "bias_init": "torch",
    },
)
