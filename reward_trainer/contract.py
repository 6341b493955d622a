"""The scoring contract: how a trained reward model is read, saved in its `config.json` under `reward_contract`.

    "reward_contract": {
        "version": 1,
        "max_length": 512,                         # tokens of a training text; longer texts are cut to it
        "truncation": "keep_end",                  # training's policy (`keep_end` cut, `filter` dropped)
        "truncation_side": "left",                 # scoring cuts an over-long text's beginning, never its end
        "implicit_prompt_rendering": "chat_template",  # HH text ("\\n\\nHuman: ...") as training rendered it
        "special_tokens": "tokenizer",             # the tokenizer's own; a leading one the text holds is not repeated
        "append_eos": false,                       # training appended the EOS string to texts not ending with it
        "reward_token": "last",                    # the reward is read at the text's last token
        "reward_mean": 0.1, "reward_std": 1.3,    # normalization (eval rewards), or null
        "attribute_weights": null,                 # several attributes: the reward is their weighted sum
        "loss": "bradley_terry"
    }

Training writes it before the first step (so checkpoints carry it) and completes it at the end (normalization).
`RewardScorer.from_pretrained`, and through it `evaluate`, `evaluate --benchmark`, `best-of-n`, the server and the
TRL reward function, read it. A checkpoint without one (older, or not made here) is read as it always was: the
saved tokenizer's own special tokens, the model's maximum positions, raw text, `reward_mean`/`reward_std` and
`attribute_weights` from the top level of `config.json`.
"""

from dataclasses import asdict, dataclass

from .loss import DEFAULT_LOSS

CONTRACT_KEY = "reward_contract"
CONTRACT_VERSION = 1


@dataclass(frozen=True)
class ScoringContract:
    """What reading the model as it was trained needs (see the module docstring for each field)."""

    max_length: int | None = None
    truncation: str = "keep_end"
    implicit_prompt_rendering: str = "raw"
    append_eos: bool = False
    reward_mean: float | None = None
    reward_std: float | None = None
    attribute_weights: list[float] | None = None
    loss: str = DEFAULT_LOSS
    truncation_side: str = "left"
    special_tokens: str = "tokenizer"
    reward_token: str = "last"
    version: int = CONTRACT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ScoringContract":
        known = cls.__dataclass_fields__
        return cls(**{key: value for key, value in values.items() if key in known})


def read_contract(config) -> ScoringContract | None:
    """The contract saved in a model config, or None for a checkpoint without one."""
    values = getattr(config, CONTRACT_KEY, None)
    return ScoringContract.from_dict(values) if isinstance(values, dict) else None


def write_contract(config, contract: ScoringContract) -> None:
    """Stores `contract` in a model config, so that `save_pretrained` writes it to `config.json`."""
    setattr(config, CONTRACT_KEY, contract.to_dict())


def with_eos(texts: list[str], eos: str) -> list[str]:
    """`append_eos`: each text with the EOS string appended unless it already ends with it (TRL's RewardTrainer
    rule for text that is not conversational)."""
    return [t if t.endswith(eos) else t + eos for t in texts]
