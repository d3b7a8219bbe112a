"""The circuits wing's job configs; their fields are the CLI's options (`probescope circuit ...`). Model, seed and
threads come from core/options.py's groups; value rules are field metadata, only cross-field rules are code."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.options import CorpusOptions, ModelOptions, RunOptions, SourceModelOptions, option as _opt


_TRANSCODERS = "pass --transcoders DIR (train a set with `probescope circuit transcoders`)"


@dataclass
class AttributeConfig(SourceModelOptions, RunOptions):
    """Attribution graph of a prompt's next token through per-layer transcoders: graph.json (circuit-tracer /
    Neuronpedia schema), the full graph, scores and a page (the model: by default the transcoders' own)."""

    prompt: str = _opt("", "the text whose next token the graph explains",
                       nonempty="pass --prompt 'The capital of France is'")
    transcoders: str = _opt("", "folder of per-layer transcoders: ours (`probescope circuit transcoders`), "
                                "circuit-tracer's (layer_L.safetensors) or SAELens's (a cfg.json folder per layer)",
                            nonempty=_TRANSCODERS)
    transcoder_format: str = _opt("auto", "layout of --transcoders (auto: detected from the files)",
                                  choices=("auto", "probescope", "circuit-tracer", "saelens"))
    out: str = _opt("runs/circuit", "run folder: graph.json, graph.safetensors, metrics.json, report.html")
    max_feature_nodes: int = _opt(2000, "feature nodes, taken in order of influence on the logits (e.g. 2000)", min=1)
    max_n_logits: int = _opt(10, "at most this many logit targets", min=1)
    desired_logit_prob: float = _opt(0.95, "logit targets until their probabilities sum to this", gt=0, max=1)
    batch_size: int = _opt(32, "targets per backward pass", min=1)
    node_threshold: float = _opt(0.8, "pruning: keep nodes carrying this share of the influence", gt=0, max=1)
    edge_threshold: float = _opt(0.98, "pruning: then edges carrying this share", gt=0, max=1)
    max_tokens: int = _opt(64, "refuse longer prompts", min=1)
    zero_bos: bool = _opt(True, "no feature nodes at a leading BOS token (its MLP output a constant)",
                          flag="--zero-bos/--keep-bos")
    bos_error: bool = _opt(False, "with --zero-bos: the BOS MLP outputs as error nodes (default: a constant, no "
                                  "node, as circuit-tracer does)", flag="--bos-error/--no-bos-error")
    quiet: bool = field(default=False, metadata={"cli": False})


@dataclass
class TranscodersConfig(ModelOptions, RunOptions, CorpusOptions):
    """One TopK transcoder per layer (mlp_in.L → mlp_out.L) trained from live activations, all layers from one
    forward per batch; resumable; per-layer FVU/L0/dead and the replacement model's agreement and KL."""

    out: str = _opt("runs/transcoders", "folder of the set (resumed if it holds a checkpoint)")
    tokens: int = _opt(200_000, "training tokens (each layer sees all of them)", min=1)
    batch_size: int = _opt(1024, "tokens per step", min=1)
    context_len: int = _opt(64, "tokens per context", min=1)
    k: int = _opt(32, "active latents per token", min=1)
    expansion: int = _opt(8, "latents = expansion x d_model", min=1)
    skip: bool = _opt(False, "a linear skip connection W_skip·x added to each transcoder's output (Paulo et al. "
                             "2025): the ridge fit of mlp_out on mlp_in over the first --skip-fit-tokens (attention-"
                             "sink tokens left out), then held fixed while the features learn the rest",
                      flag="--skip/--no-skip")
    skip_fit_tokens: int = _opt(16_384, "tokens of the training stream the skip's ridge fit reads (forward only, "
                                        "before training; at least a few times d_model)", min=1)
    lr: float = _opt(0.0, "0: the SAE trainer's rule for its sign optimiser", min=0)
    eval_contexts: int = _opt(32, "held-out contexts for the per-layer and replacement-model figures", min=1)
    checkpoint_every: int = _opt(0, "steps; 0: about 5 per run", min=0)
    label_contexts: int = _opt(64, "training contexts scanned for every latent's label and top contexts "
                                   "(layer_L/latents.json; 0: skip, label later with `probescope circuit labels`)",
                               min=0)
    resume: bool = _opt(True, "--no-resume: start over in --out", flag="--resume/--no-resume")
    quiet: bool = field(default=False, metadata={"cli": False})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokens < self.batch_size:
            raise ValueError(f"--tokens {self.tokens} is less than one batch of {self.batch_size}: raise --tokens or "
                             "lower --batch-size")

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_size)


@dataclass
class LabelsConfig(SourceModelOptions, RunOptions, CorpusOptions):
    """Label every latent of a transcoder set by its top contexts (as `probescope sae latents` does for an SAE):
    layer_L/latents.json in the set; graphs built from it carry the labels (graph.json's clerp, the page's hover)."""

    transcoders: str = _opt("", "folder of per-layer transcoders (from `probescope circuit transcoders`)",
                            nonempty=_TRANSCODERS)
    contexts: int = _opt(64, "contexts to scan", min=1)
    context_len: int = _opt(64, "tokens per context", min=2)
    top_n: int = _opt(8, "top contexts kept per latent", min=1)
    quiet: bool = field(default=False, metadata={"cli": False})


MODES = ("direct", "frozen", "free", "model")
# Diagnostics between frozen and free / model: which half of the frozen world an edge's sign depends on.
DIAGNOSTIC_MODES = ("attn_frozen", "norms_frozen", "model_frozen")
ALL_MODES = MODES + DIAGNOSTIC_MODES


@dataclass
class InterveneConfig(SourceModelOptions, RunOptions):
    """Interventions on a graph's prompt: set/scale/zero features in the replacement model (attention frozen or
    free) and in the real model; the top edges into the top logit, predicted against measured (the model: by
    default the graph's own)."""

    graph: str = _opt("", "run folder of `probescope circuit attribute` (its graph, prompt and transcoders)",
                      nonempty="pass --graph RUN (a folder written by `probescope circuit attribute`)")
    feature: list[str] = _opt(list, "LAYER,POS,FEATURE=VALUE sets a feature (=0 zeroes it), LAYER,POS,FEATURE*FACTOR "
                                    "scales it; repeatable, all applied together")
    check_edges: int = _opt(20, "zero each of the top-N features by |edge into the top logit| and compare the graph's "
                                "predicted change of that logit with the measured one (0: skip)", min=0)
    modes: list[str] = _opt(lambda: list(MODES), "settings: direct (only direct paths), frozen (attention and norms "
                                                 "frozen), free (recomputed), model (the real model); diagnostics: "
                                                 "attn_frozen, norms_frozen (one half frozen), model_frozen (real "
                                                 "MLPs, attention and norms frozen)", parse="names",
                            choices=ALL_MODES, nonempty="use some of " + ",".join(ALL_MODES))
    transcoders: str = _opt("", "default: the transcoders the graph was built with")
    out: str = _opt("runs/circuit-intervene", "run folder: config.json, metrics.json, report.html")
    top: int = _opt(5, "tokens shown before and after the interventions", min=1)
    quiet: bool = field(default=False, metadata={"cli": False})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.feature and self.check_edges == 0:
            raise ValueError("nothing to do: pass --feature L,P,F=V and/or --check-edges N")
        from .intervene import parse_intervention

        for f in self.feature:
            parse_intervention(f)
