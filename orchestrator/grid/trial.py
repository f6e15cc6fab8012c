"""A trial: one method at one point of a scenario's grid with one seed, as a typed, hashable record.

Everything that changes a result is a field, so the trial key (a hash of the canonical JSON of all
fields) names one experiment wherever and by whomever it runs:

- `kind` says which experiment runs (orchestrator/experiments: one_class, cross_dataset, two_sample, ...);
- the grid point: dataset, normal and known anomaly class, the ratios, the replicate `seed`;
- `labeled_anomalies`: what the method's training set does with the labeled anomalies: "used" (a method
  that uses labels), "dropped" (a label-free method trains without them: its gamma_p = 0 column is the
  clean one-class result) or "unlabeled" (a label-free method sees them as unlabeled pollution);
- `params`: the method's whole Config (paper defaults < profile < --set < variant);
- `settings`: the experiment kind's own settings (the labeled-anomaly dataset of cross_dataset, CADet's
  sample sizes and attack budgets, a scenario axis such as `training`), whole, profile values included.

>>> t = Trial(kind="one_class", scenario="scenario2", profile="quick", dataset="digits", method="hscl",
...           normal_class=0, anomaly_class=1, gamma_p=0.1, gamma_l=0.05)
>>> Trial.from_dict(t.to_dict()) == t, len(t.key)
(True, 20)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from orchestrator.data.splits import SplitSpec, stable_seed

# What the training seed derives from: the grid point and the replicate, never the method's parameters,
# the variant or the kind's settings. So ablation variants, searched parameters and an experiment's
# settings start from the same weights and see the same batches: comparisons between them are paired.
SEED_FIELDS = ("method", "dataset", "normal_class", "anomaly_class", "gamma_p", "gamma_l", "gamma_l_normal",
               "val_fraction", "seed")


def key_of(config: dict) -> str:
    """Stable hash of a config's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Trial:
    kind: str
    scenario: str
    profile: str
    dataset: str
    method: str
    normal_class: int | None
    anomaly_class: int | None
    gamma_p: float = 0.0
    gamma_l: float = 0.0
    gamma_l_normal: float = 0.0
    val_fraction: float = 0.05
    seed: int = 0
    labeled_anomalies: str = "used"
    variant: str | None = None
    params: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-able data: what the key hashes, what a row stores as `config`, what Ray ships."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Trial:
        return cls(**data)

    @property
    def key(self) -> str:
        """Same experiment, same key."""
        return key_of(self.to_dict())

    @property
    def training_seed(self) -> int:
        """The seed of the method's initialisation and augmentations (one rule for every kind)."""
        return stable_seed("train", {k: getattr(self, k) for k in SEED_FIELDS})

    def split_spec(self) -> SplitSpec:
        """The DeepSAD split of a class-grid trial (orchestrator/data/splits.py)."""
        return SplitSpec(normal_class=self.normal_class, anomaly_class=self.anomaly_class, gamma_p=self.gamma_p,
                         gamma_l=self.gamma_l, gamma_l_normal=self.gamma_l_normal, val_fraction=self.val_fraction,
                         seed=self.seed)
