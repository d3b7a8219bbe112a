"""The manifold jobs' configs: each dataclass is its command (`probescope manifold find | move`).

Numeric bounds are declared in the fields' metadata (core/checks.py) and checked on construction too, so the
Python API refuses what the CLI refuses, with the same message."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.options import CorpusOptions, ModelOptions, RunOptions, SourceModelOptions, option
from .concepts import CONCEPTS, FIT_LEADS, MOVE_POSITIONS, MOVE_TASKS


@dataclass
class FindConfig(ModelOptions, RunOptions):
    """Find a concept's shape per layer: mean activation per value, PCA, circle or curve fit, LOO error, dims."""

    concept: str = option("days", "built-in concept (" + ", ".join(CONCEPTS) + ") or a .jsonl/.csv with text, "
                                  "position (character offset), value")
    n: int = option(280, "examples to generate (built-in concepts)", min=1)
    period: int = option(0, "period of a cyclic concept read from a file (0: ordinal; built-ins know theirs)",
                         min=3, also=(0,))
    layers: list[int] | None = option(None, "layers to read, e.g. 4,8,12 (default: all)", parse="layers_or_all")
    k: int = option(5, "PCA axes of the per-value means that the shapes are fitted in (a circle needs 2)", min=2)
    probe_sets: str = option("auto", "layers read out together by one linear read-out, e.g. '12+16+20,4+8' (auto: "
                                     "the three layers with the best single-layer read-out; '': none)")
    min_per_value: int = option(4, "fewest examples a value may have (the two-fold read-out needs 2)", min=2)
    n_shuffles: int = option(10, "shuffled-value draws for the baseline every score is shown beside", min=1)
    batch_size: int = option(32, "texts per forward")
    out: str = option("runs/manifold-find", "run folder", flag="--out -o")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.read_sets  # parse now: a bad set is an error before any work

    @property
    def read_sets(self) -> list[list[int]] | str:
        """'auto', or the layer sets of --probe-sets."""
        if self.probe_sets.strip() == "auto":
            return "auto"
        try:
            return [[int(x) for x in p.split("+")] for p in self.probe_sets.replace(" ", "").split(",") if p]
        except ValueError:
            raise ValueError(f"--probe-sets {self.probe_sets!r}: write sets as '12+16+20,4+8', or auto") from None


@dataclass
class MoveConfig(ModelOptions, RunOptions):
    """Move the concept along its circle (Engels et al. 2024) per layer and strength, beside every baseline."""

    task: str = option("next-day", "prompts: next-day ('If today is {Day}, then tomorrow is'), next-month, or "
                                   "Engels et al.'s arithmetic days ('{N} days from {Day} is') and months",
                       choices=tuple(MOVE_TASKS))
    layers: list[int] | None = option(None, "layers to edit one at a time (default: all)", parse="layers_or_all")
    layer_sets: str = option("", "layers edited together, e.g. '6+8+10,12+14' (each set is one more row)")
    strengths: list[float] = option(lambda: [1.0, 2.0], "radius scales of the circle point, e.g. 1,2", min=0,
                                    nonempty="give at least one radius scale, e.g. 1,2")
    k: int = option(5, "PCA axes of the per-value means that the circle is fitted in (a circle needs 2)", min=2)
    positions: str = option("concept", "where to edit: concept (the value token), last (the last token), readers "
                                       "(every token after the value token) or all (the value token and its "
                                       "readers); away from the value token each position has its own circle",
                            choices=MOVE_POSITIONS)
    fit_contexts: int = option(0, "fit each circle (and the PCA means, the mean) on this many prompts per value and "
                                  "template instead of the task's own: the task's prompt after a neutral lead sentence, "
                                  "the value and every token after it unchanged (the evaluated prompts are never in "
                                  "the fit); 0: on the task's own prompts, one per value and template",
                               min=0, max=len(FIT_LEADS))
    limit: int = option(0, "(prompt, target) rows to score, drawn at random (0: all)", min=0)
    batch_size: int = option(64, "rows per forward")
    out: str = option("runs/manifold-move", "run folder", flag="--out -o")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sets  # parse now: a bad set is an error before any work

    @property
    def sets(self) -> list[list[int]]:
        out = []
        for part in (p.strip() for p in self.layer_sets.split(",")):
            if not part:
                continue
            try:
                out.append([int(x) for x in part.split("+")])
            except ValueError:
                raise ValueError(f"--layer-sets {self.layer_sets!r}: write sets as '6+8+10,12+14'") from None
        return out


@dataclass
class ClustersConfig(SourceModelOptions, RunOptions, CorpusOptions):
    """Cluster an SAE's decoder directions (Engels et al. 2024): per cluster its size, mean cosine, irreducibility
    and a PCA circle fit, each beside random clusters of the same size, and its latents' labels."""

    sae: str = option("", "SAE folder (from `probescope sae train`, SAELens or sparsify layout)",
                      nonempty="give the SAE folder (e.g. runs/sae from `probescope sae train`)")
    site: str = option("", "the site the SAE must read, e.g. resid_post.11 ('' : its own); another is refused")
    threshold: float = option(0.5, "graph clustering: join decoder directions with cosine ≥ this", min=-1.0, max=1.0)
    linkage: str = option("single", "graph clustering at --threshold: single (connected components of the pairs at "
                                    "cosine ≥ threshold, Engels et al.) or average (groups merged while their mean "
                                    "pairwise cosine ≥ threshold: no chaining)", choices=("single", "average"))
    n_clusters: int = option(0, "0: graph clustering at --threshold; N ≥ 2: spectral clustering into N clusters",
                             min=2, also=(0,))
    group_by: str = option("cosine", "cosine: decoder directions joined by cosine (graph at --threshold, or "
                                     "spectral); siblings: latents that fire under one shared parent latent and rarely "
                                     "together (a TopK SAE's split of a concept into near-orthogonal children)",
                           choices=("cosine", "siblings"))
    directions: str = option("decoder", "cosine: what is clustered — decoder: the decoder rows (Engels et al.); cofire: "
                                        "each latent's mean reconstruction where it fires, less the mean over all "
                                        "tokens (its row completed by the latents firing with it: joins the children "
                                        "of a concept whose shared part a parent latent took)",
                             choices=("decoder", "cofire"))
    min_fires: int = option(3, "cofire: fewest tokens (of those read) a latent must fire on to be clustered", min=1)
    min_parent: float = option(0.9, "siblings: share of a latent's tokens its parent must fire on", gt=0, max=1)
    min_size: int = option(2, "smallest cluster reported", min=2)
    top: int = option(20, "clusters reported (cosine: by mean cosine; siblings: by size)", min=1)
    contexts: int = option(128, "contexts of --context-len tokens the irreducibility is measured on", min=1)
    context_len: int = option(64, "tokens per context", min=2)
    n_random: int = option(20, "random clusters of the same size each score is shown beside", min=1)
    k: int = option(5, "PCA axes of a cluster's decoder directions the circle is fitted in", min=2)
    min_points: int = option(50, "fewest tokens a cluster must fire on for its irreducibility", min=3)
    batch_size: int = option(8, "contexts per forward", min=1)
    out: str = option("runs/manifold-clusters", "run folder", flag="--out -o")


@dataclass
class TransformConfig(ModelOptions, RunOptions):
    """What transforms the manifold on "+k" prompts: the heads and MLPs that carry the start value to the answer
    (activation patching, intervals over folds of pairs), and whether the answer is held as a point on its circle
    (rotation) or as the unwrapped sum x + k (addition: the counterpoint of Feucht et al. 2026), per layer."""

    task: str = option("days", "prompts: Engels et al.'s arithmetic days ('{N} days from {Day} is') or months, or "
                                "next-day / next-month (k = 1 only: no offset or sum hypothesis)",
                       choices=tuple(MOVE_TASKS))
    layers: list[int] | None = option(None, "layers whose last-token residual is scored (default: all)",
                                      parse="layers_or_all")
    k: int = option(5, "PCA axes of the per-value means that a circle is fitted in (a circle needs 2)", min=2)
    folds: int = option(5, "folds of prompt pairs: each component's effect is the mean over folds, with a 95% interval",
                        min=2)
    top: int = option(8, "components reported and whose outputs are scored for the answer's form", min=1)
    n_shuffles: int = option(10, "shuffled-value draws for the baseline every read-out is shown beside", min=1)
    batch_size: int = option(64, "rows per forward")
    out: str = option("runs/manifold-transform", "run folder", flag="--out -o")


@dataclass
class LineBreakConfig(ModelOptions, RunOptions):
    """Line breaks (Gurnee et al. 2025): does the newline decision compare the characters since the line start with
    the line width, and which heads and MLPs carry the width to it (patching, intervals over folds of pairs)."""

    widths: list[int] = option(lambda: [24, 32, 40, 48], "line widths the generated texts are wrapped at", min=16,
                               max=120, nonempty="give at least one width, e.g. 24,32,40")
    n: int = option(256, "texts of the behaviour sweep (widths × remainders 0..15, cycled)", min=16)
    pairs: int = option(40, "(break due, wider lines) text pairs for the patching", min=4)
    delta: int = option(12, "characters the wide text's previous lines are longer by", min=6, max=60)
    lines: int = option(3, "previous lines before the last one (they set the width)", min=1, max=12)
    layers: list[int] | None = option(None, "layers whose last-token residual is read out (default: all)",
                                      parse="layers_or_all")
    folds: int = option(5, "folds of pairs: each component's effect is the mean over folds, with a 95% interval",
                        min=2)
    top: int = option(8, "components reported, read out and (heads) checked for attention on the newlines", min=1)
    n_shuffles: int = option(10, "shuffled-value draws for the baseline every read-out is shown beside", min=1)
    batch_size: int = option(32, "texts per forward", min=1)
    out: str = option("runs/manifold-linebreak", "run folder", flag="--out -o")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pairs < 2 * self.folds:
            raise ValueError(f"--pairs {self.pairs} with --folds {self.folds}: each fold needs ≥ 2 pairs; give "
                             f"--pairs ≥ {2 * self.folds} or fewer --folds")
