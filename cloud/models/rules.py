"""The rule-based baseline (brief §3.3): a decision tree over wafercore's 24 spatial features.

This is what fabs traditionally run: hand-made spatial statistics and a shallow classifier.
scikit-learn fits the tree; the fitted tree is then kept as plain arrays (children, split
feature, threshold, class distribution per node), so that it is stored as JSON (never pickle)
and predicts in pure NumPy with no scikit-learn at inference, bit for bit as scikit-learn does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from wafercore.classes import NUM_CLASSES
from wafercore.features import FEATURE_NAMES, spatial_features

if TYPE_CHECKING:
    from sklearn.tree import DecisionTreeClassifier

FORMAT = "wafer-rules-tree/1"
"""Tag of the `RulesModel.to_dict` layout; bumped on any incompatible change."""
LEAF = -1
"""Child index of a leaf (scikit-learn's ``TREE_LEAF``)."""

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def fit_tree(
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    max_depth: int | None = 10,
    min_samples_leaf: int = 5,
    class_weight: Literal["balanced"] | None = "balanced",
    seed: int = 0,
) -> DecisionTreeClassifier:
    """Fit scikit-learn's decision tree on spatial features (see `RulesModel.fit`)."""
    from sklearn.tree import DecisionTreeClassifier

    x = _check_features(features)
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},), got {y.shape}")
    if len(y) == 0:
        raise ValueError("cannot fit a tree on no samples")
    if y.min() < 0 or y.max() >= NUM_CLASSES:
        raise ValueError(f"labels must lie in [0, {NUM_CLASSES})")
    tree = DecisionTreeClassifier(
        max_depth=max_depth,
        min_samples_leaf=min_samples_leaf,
        class_weight=class_weight,
        random_state=seed,
    )
    return tree.fit(x, y)


@dataclass(frozen=True, eq=False)
class RulesModel:
    """A fitted decision tree as plain arrays; node 0 is the root.

    Attributes:
        children_left: (M,) left child of each node (``x[feature] <= threshold``), -1 at leaves.
        children_right: (M,) right child of each node, -1 at leaves.
        feature: (M,) feature column each node splits on (meaningless at leaves).
        threshold: (M,) split threshold of each node (meaningless at leaves).
        distribution: (M, 9) class probabilities of each node, rows summing to 1 (0 for a node
            without weight); classes absent from training have probability 0 everywhere.
        params: how the tree was fitted (for provenance).
    """

    children_left: Ints
    children_right: Ints
    feature: Ints
    threshold: Floats
    distribution: Floats
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = len(self.children_left)
        if m == 0:
            raise ValueError("a tree has at least one node")
        for name in ("children_right", "feature", "threshold"):
            if getattr(self, name).shape != (m,):
                raise ValueError(f"{name} must have shape ({m},)")
        if self.distribution.shape != (m, NUM_CLASSES):
            raise ValueError(f"distribution must have shape ({m}, {NUM_CLASSES})")
        internal = self.children_left != LEAF
        if np.any(internal != (self.children_right != LEAF)):
            raise ValueError("a node has exactly zero or two children")
        kids = np.concatenate([self.children_left[internal], self.children_right[internal]])
        # Children always come after their parent (scikit-learn builds depth first): this rules
        # out cycles, so traversal terminates.
        parents = np.concatenate([np.flatnonzero(internal)] * 2)
        if kids.size and (np.any(kids <= parents) or kids.max() >= m):
            raise ValueError("malformed tree: children must follow their parent")
        if np.any((self.feature[internal] < 0) | (self.feature[internal] >= len(FEATURE_NAMES))):
            raise ValueError("split feature out of range")

    @classmethod
    def fit(
        cls,
        features: npt.ArrayLike,
        labels: npt.ArrayLike,
        *,
        max_depth: int | None = 10,
        min_samples_leaf: int = 5,
        class_weight: Literal["balanced"] | None = "balanced",
        seed: int = 0,
    ) -> RulesModel:
        """Fit the tree on spatial features.

        Args:
            features: (N, 24) `wafercore.features.SpatialFeatures.matrix` rows.
            labels: (N,) class ids.
            max_depth: deepest split (the brief uses 10); None for unbounded.
            min_samples_leaf: smallest leaf, in samples.
            class_weight: ``"balanced"`` weighs classes by inverse frequency (WM-811K is 85%
                None); None weighs every sample equally.
            seed: scikit-learn's ``random_state`` (ties between equally good splits).

        Returns:
            The fitted model.
        """
        tree = fit_tree(
            features,
            labels,
            max_depth=max_depth,
            min_samples_leaf=min_samples_leaf,
            class_weight=class_weight,
            seed=seed,
        )
        params = {
            "max_depth": max_depth,
            "min_samples_leaf": min_samples_leaf,
            "class_weight": class_weight,
            "seed": seed,
        }
        return cls.from_sklearn(tree, params=params)

    @classmethod
    def from_sklearn(
        cls, tree: DecisionTreeClassifier, params: dict[str, Any] | None = None
    ) -> RulesModel:
        """Copy a fitted scikit-learn tree into plain arrays."""
        t = tree.tree_
        value = np.asarray(t.value, dtype=np.float64)[:, 0, :]  # (M, classes seen in training)
        totals = value.sum(axis=1)
        if not np.allclose(totals[totals > 0], 1.0):
            # scikit-learn < 1.4 stores weighted counts and normalises them in predict_proba;
            # newer versions store the fractions themselves, which predict_proba returns as is.
            totals[totals == 0.0] = 1.0
            value = value / totals[:, np.newaxis]
        distribution = np.zeros((len(value), NUM_CLASSES))
        distribution[:, np.asarray(tree.classes_, dtype=np.int64)] = value
        return cls(
            children_left=np.asarray(t.children_left, dtype=np.int64),
            children_right=np.asarray(t.children_right, dtype=np.int64),
            feature=np.asarray(t.feature, dtype=np.int64),
            threshold=np.asarray(t.threshold, dtype=np.float64),
            distribution=distribution,
            params=dict(params or {}),
        )

    @property
    def n_nodes(self) -> int:
        """Number of nodes, leaves included."""
        return len(self.children_left)

    @property
    def depth(self) -> int:
        """Length of the longest root-to-leaf path (0 for a single leaf)."""
        depth = np.zeros(self.n_nodes, dtype=np.int64)
        for node in np.flatnonzero(self.children_left != LEAF):  # parents precede children
            depth[[self.children_left[node], self.children_right[node]]] = depth[node] + 1
        return int(depth.max())

    def leaves(self, features: npt.ArrayLike) -> Ints:
        """Leaf index reached by each row of (N, 24) features, all rows in step."""
        x = _check_features(features)
        # scikit-learn compares float32 features with float64 thresholds: do the same so that
        # a value that rounds across a threshold goes the same way.
        x = x.astype(np.float32).astype(np.float64)
        rows = np.arange(len(x))
        node = np.zeros(len(x), dtype=np.int64)
        active = rows[self.children_left[node] != LEAF]
        while active.size:
            at = node[active]
            go_left = x[active, self.feature[at]] <= self.threshold[at]
            node[active] = np.where(go_left, self.children_left[at], self.children_right[at])
            active = active[self.children_left[node[active]] != LEAF]
        return node

    def predict_proba(self, features: npt.ArrayLike) -> Floats:
        """Class probabilities (N, 9) of (N, 24) spatial features."""
        return self.distribution[self.leaves(features)]

    def predict(self, features: npt.ArrayLike) -> Ints:
        """Most probable class (N,) of (N, 24) spatial features."""
        return np.asarray(self.predict_proba(features).argmax(axis=1), dtype=np.int64)

    def predict_proba_grids(self, grids: npt.NDArray[np.integer[Any]]) -> Floats:
        """Class probabilities (N, 9) of canonical grids (N, 26, 26), features computed here."""
        return self.predict_proba(spatial_features(grids).matrix())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; `from_dict` restores an identical model."""
        return {
            "format": FORMAT,
            "feature_names": list(FEATURE_NAMES),
            "num_classes": NUM_CLASSES,
            "params": dict(self.params),
            "children_left": self.children_left.tolist(),
            "children_right": self.children_right.tolist(),
            "feature": self.feature.tolist(),
            # Python floats print with repr, which round-trips float64 exactly.
            "threshold": self.threshold.tolist(),
            "distribution": self.distribution.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RulesModel:
        """Inverse of `to_dict`.

        Raises:
            ValueError: another format, other features or classes, or a malformed tree.
        """
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document: format {data.get('format')!r}")
        if tuple(data.get("feature_names", ())) != FEATURE_NAMES:
            raise ValueError("the tree was fitted on other features than wafercore's")
        if data.get("num_classes") != NUM_CLASSES:
            raise ValueError(f"the tree has {data.get('num_classes')} classes, not {NUM_CLASSES}")
        distribution = np.asarray(data["distribution"], dtype=np.float64)
        return cls(
            children_left=np.asarray(data["children_left"], dtype=np.int64),
            children_right=np.asarray(data["children_right"], dtype=np.int64),
            feature=np.asarray(data["feature"], dtype=np.int64),
            threshold=np.asarray(data["threshold"], dtype=np.float64),
            distribution=distribution.reshape(-1, NUM_CLASSES),
            params=dict(data.get("params", {})),
        )


def _check_features(features: npt.ArrayLike) -> Floats:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"features must be (N, {len(FEATURE_NAMES)}), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features must be finite")
    return x
