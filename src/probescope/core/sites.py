"""Every point of the forward pass by name: one grammar, discovery per family, and the one place hooks are registered.

Site names (L a block index, negative counts from the end; H a query head):

| site | what it is | read | edit |
| --- | --- | --- | --- |
| `embed` | the input-embedding module's output (gemma: already scaled; gpt2: without positions) | yes | yes |
| `resid_pre.L` | the residual stream entering block L (`resid_pre.0` = HF `hidden_states[0]`) | yes | yes |
| `attn_out.L` | the attention module's output (after o_proj, with its bias; before gemma's post-attention norm) | yes | yes |
| `attn_head.L.H` | head H's share of `attn_out.L`: its slice of z through its columns of o_proj (no bias) | yes | yes |
| `attn_pattern.L` | attention probabilities [B, heads, T, T] (needs eager attention: see below) | yes | no |
| `resid_mid.L` | the residual stream after attention, before the MLP | yes | yes |
| `mlp_in.L` | the MLP module's input (after the pre-MLP norm) | yes | yes |
| `mlp_out.L` | the MLP module's output (before gemma's post-feedforward norm) | yes | yes |
| `resid_post.L` | the residual stream after block L (= HF `hidden_states[L + 1]`, bar the final norm); `L` alone means this | yes | yes |
| `logits` | the model's output logits | yes | yes |
| `module_in:PATH` / `module_out:PATH` | the first input / the output of any submodule by its dotted path (e.g. `module_in:model.layers.3.mlp.down_proj`) | yes | yes |

Heads of a layer sum to `attn_out.L` minus the o_proj bias. `attn_pattern.L` is only computed by eager attention:
reading it switches the model to eager for that forward, says so once, and switches back; no other site
changes the model's attention implementation.

Families (`LAYOUTS`, tested site by site in tests/test_families.py, table in docs/families.md): parallel-residual
blocks (GPT-NeoX with `use_parallel_residual`, Phi-1/2, Falcon) have no `resid_mid` (attention and the MLP both
read `resid_pre` and add together): it is refused by name. In a mixture of experts `mlp_out` is the sparse block's
output (the mixture, shared expert included); Granite's `residual_multiplier` scales what each branch adds.

`site_hooks(model, {site: fn})` registers plain PyTorch hooks on the model's own modules, runs `fn(tensor)`
(a replacement or None) for every forward inside, stops the forward after the deepest site when asked, and
always removes its hooks. Nothing reimplements the model, so numbers are HF's. `tap_grad(tensor, fn)` is the one
gradient tap (fn sees, and may replace, the gradient flowing back through a tensor), and `blocks_from(model, L)`
runs the model's forward through blocks L.. only. This module is the only one in probescope that registers hooks
(tests/test_house.py checks the source tree).
"""

from __future__ import annotations

import re
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

SiteFn = Callable[[torch.Tensor], "torch.Tensor | None"]

LAYER_KINDS = ("resid_pre", "attn_out", "attn_pattern", "resid_mid", "mlp_in", "mlp_out", "resid_post")
MODULE_KINDS = ("module_in", "module_out")
KINDS = ("embed", *LAYER_KINDS, "attn_head", "logits", *MODULE_KINDS)
READ_ONLY = ("attn_pattern",)
# order of sites inside one block, for "stop after the deepest site"
_STAGE = {"resid_pre": 0, "attn_pattern": 1, "attn_head": 1, "attn_out": 2, "resid_mid": 3, "mlp_in": 4, "mlp_out": 5,
          "resid_post": 6}
GRAMMAR = ("embed | resid_pre.L | resid_mid.L | resid_post.L (or L) | attn_out.L | attn_head.L.H | attn_pattern.L | "
           "mlp_in.L | mlp_out.L | logits | module_in:PATH | module_out:PATH")


class StopForward(Exception):
    """Raised by a hook to end the forward pass once the deepest needed site has run."""


@dataclass(frozen=True, order=True)
class Site:
    """One named point of the forward pass (see the module doc). `layer`/`head` are None where they do not apply;
    a module site has its dotted `path` (and, once resolved, `layer`: the block holding it, None outside the blocks)."""

    kind: str
    layer: int | None = None
    head: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"{self.kind}:{self.path}"
        if self.layer is None:
            return self.kind
        return f"{self.kind}.{self.layer}" + (f".{self.head}" if self.head is not None else "")

    @property
    def editable(self) -> bool:
        return self.kind not in READ_ONLY

    def order(self, n_layers: int) -> tuple[int, int]:
        """Where the site sits in the forward: (block, stage)."""
        if self.kind == "embed":
            return (-1, 0)
        if self.kind == "logits":
            return (n_layers, 0)
        if self.kind in MODULE_KINDS:  # inside block L: stopping there means at the block's end
            return (n_layers, -1) if self.layer is None else (int(self.layer), _STAGE["resid_post"])
        return (int(self.layer), _STAGE[self.kind])


_NAME = re.compile(r"^(?P<kind>[a-z_]+)(?:\.(?P<layer>-?\d+))?(?:\.(?P<head>-?\d+))?$")


def parse_site(site: "str | int | Site") -> Site:
    """'resid_mid.3' → Site('resid_mid', 3); an int or '3' → resid_post.3; 'attn_head.2.1' → head 1 of layer 2.

    Only the grammar is checked here; `resolve_site` checks ranges against a model.
    """
    if isinstance(site, Site):
        return site
    if isinstance(site, bool):
        raise TypeError(f"site {site!r} is not a site name: use {GRAMMAR}")
    if isinstance(site, int):
        return Site("resid_post", site)
    text = str(site).strip()
    kind, colon, path = text.partition(":")
    if colon:
        if kind.strip() not in MODULE_KINDS:
            raise ValueError(f"site {site!r} is not understood: only module_in:PATH and module_out:PATH take a path "
                             f"(e.g. module_in:model.layers.3.mlp.down_proj); use {GRAMMAR}")
        if not path.strip():
            raise ValueError(f"site {site!r} needs a module path: write {kind.strip()}:PATH, e.g. "
                             f"{kind.strip()}:model.layers.3.mlp.down_proj")
        return Site(kind.strip(), path=path.strip())
    if text in MODULE_KINDS:
        raise ValueError(f"site {site!r} needs a module path: write {text}:PATH, e.g. "
                         f"{text}:model.layers.3.mlp.down_proj")
    if text.lstrip("-").isdigit():
        return Site("resid_post", int(text))
    m = _NAME.match(text)
    if not m or m["kind"] not in KINDS:
        raise ValueError(f"site {site!r} is not understood: use {GRAMMAR} (e.g. resid_post.6, attn_head.3.1)")
    kind, layer, head = m["kind"], m["layer"], m["head"]
    if kind in ("embed", "logits"):
        if layer is not None:
            raise ValueError(f"site {site!r}: {kind} takes no layer (write just '{kind}')")
        return Site(kind)
    if layer is None:
        raise ValueError(f"site {site!r} needs a layer: write {kind}.L, e.g. {kind}.6")
    if kind == "attn_head":
        if head is None:
            raise ValueError(f"site {site!r} needs a head: write attn_head.L.H, e.g. attn_head.{layer}.0")
        return Site(kind, int(layer), int(head))
    if head is not None:
        raise ValueError(f"site {site!r}: only attn_head takes a head index (write {kind}.{layer})")
    return Site(kind, int(layer))


def site_name(site: "str | int | Site") -> str:
    """Canonical spelling of a site (grammar only)."""
    return str(parse_site(site))


# Other toolkits' names for the same points: TransformerLens / SAELens hook names and module paths (nnsight,
# sparsify). A user's SAE from another toolkit maps onto a site through `foreign_site`.
_TL = {"hook_resid_pre": "resid_pre", "hook_resid_mid": "resid_mid", "hook_resid_post": "resid_post",
       "hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out", "ln2.hook_normalized": "mlp_in",
       # TransformerLens's hook_mlp_in is the MLP block's input *before* ln2, i.e. resid_mid (ours: mlp_in is after it)
       "hook_mlp_in": "resid_mid", "attn.hook_pattern": "attn_pattern"}
_TL_RE = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(k) for k in _TL) + r")$")
_PATH_RE = re.compile(r"^(?:.*\.)?(?:layers|h)\.(\d+)"
                      r"(?:\.(mlp|self_attn|attn|feed_forward|attention|self_attention))?$")


def foreign_site(name: str) -> str:
    """Our site for another toolkit's name ('blocks.10.hook_resid_post' → 'resid_post.10', 'layers.10.mlp' →
    'mlp_out.10', 'model.layers.3.self_attn' → 'attn_out.3'); '' when the name is not one we know."""
    name = (name or "").strip()
    if not name:
        return ""
    try:
        return site_name(name)
    except (ValueError, TypeError):
        pass
    m = _TL_RE.match(name)
    if m:
        return f"{_TL[m.group(2)]}.{int(m.group(1))}"
    if name in ("hook_embed", "embed", "model.embed_tokens", "transformer.wte"):
        return "embed"
    m = _PATH_RE.match(name)
    if m:
        kind = {None: "resid_post", "mlp": "mlp_out", "feed_forward": "mlp_out", "self_attn": "attn_out",
                "attn": "attn_out", "attention": "attn_out", "self_attention": "attn_out"}[m.group(2)]
        return f"{kind}.{int(m.group(1))}"
    return ""


# ----------------------------------------------------------------------------------------------------------
# Discovery: where each site lives in a family's modules.
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Module names of one family's block (children of the block; "" = none).

    `mid_norm`: the norm whose output is `mlp_in` (its input is `resid_mid`, or `resid_pre` in a parallel block;
    "" = the MLP reads `resid_mid` unnormed, as in olmo2). `attn_resid` / `mlp_resid`: the norm applied to
    attention's / the MLP's output before it is added to the residual (gemma2/3 and olmo2 post-norms; "" = added as
    is). `parallel`: attention and the MLP both read `resid_pre` and add together (no `resid_mid`). `resid_scale`: a
    config attribute multiplying what each branch adds (granite's `residual_multiplier`). `inplace_mlp_out`: the
    block adds into the MLP's output tensor in place (falcon), so readers get a copy."""

    family: str
    layers: str
    final_norm: str
    attn: str = "self_attn"
    o_proj: str = "o_proj"
    mlp: str = "mlp"
    mid_norm: str = "post_attention_layernorm"
    attn_resid: str = ""
    mlp_resid: str = ""
    parallel: bool = False
    resid_scale: str = ""
    inplace_mlp_out: bool = False
    conv1d: bool = False  # gpt2's Conv1D stores o_proj's weight as [in, out]


_LLAMA = Layout("llama", "model.layers", "model.norm")
LAYOUTS: dict[str, Layout] = {}
for _t in ("llama", "mistral", "qwen2", "qwen3", "olmo", "phi3", "smollm3", "mixtral", "qwen2_moe", "qwen3_moe"):
    LAYOUTS[_t] = replace(_LLAMA, family=_t)
LAYOUTS["granite"] = replace(_LLAMA, family="granite", resid_scale="residual_multiplier")
LAYOUTS["olmo2"] = replace(_LLAMA, family="olmo2", mid_norm="", attn_resid="post_attention_layernorm",
                           mlp_resid="post_feedforward_layernorm")
for _t in ("gemma3_text", "gemma3", "gemma2"):
    LAYOUTS[_t] = Layout("gemma3" if _t != "gemma2" else "gemma2", "model.layers", "model.norm",
                         mid_norm="pre_feedforward_layernorm", attn_resid="post_attention_layernorm",
                         mlp_resid="post_feedforward_layernorm")
LAYOUTS["gemma"] = Layout("gemma", "model.layers", "model.norm")
LAYOUTS["gpt2"] = Layout("gpt2", "transformer.h", "transformer.ln_f", attn="attn", o_proj="c_proj", mlp="mlp",
                         mid_norm="ln_2", conv1d=True)
LAYOUTS["gpt_neox"] = Layout("gpt_neox", "gpt_neox.layers", "gpt_neox.final_layer_norm", attn="attention",
                             o_proj="dense", parallel=True)
LAYOUTS["phi"] = Layout("phi", "model.layers", "model.final_layernorm", o_proj="dense", mid_norm="input_layernorm",
                        parallel=True)
LAYOUTS["falcon"] = Layout("falcon", "transformer.h", "transformer.ln_f", attn="self_attention", o_proj="dense",
                           mid_norm="input_layernorm", parallel=True, inplace_mlp_out=True)


def _variant(layout: Layout, cfg) -> Layout:
    """The layout of this config's block where a family has several (parallel or sequential residual, Falcon's
    decoder architectures)."""
    if layout.family == "gpt_neox" and not getattr(cfg, "use_parallel_residual", True):
        return replace(layout, parallel=False)
    if layout.family == "falcon":
        if getattr(cfg, "new_decoder_architecture", False):  # one norm per branch unless num_ln_in_parallel_attn=1
            two = getattr(cfg, "num_ln_in_parallel_attn", None) in (None, 2)
            return replace(layout, mid_norm="ln_mlp") if two else layout
        if not getattr(cfg, "parallel_attn", True):
            return replace(layout, parallel=False, mid_norm="post_attention_layernorm", inplace_mlp_out=False)
    return layout

# Where the blocks are when the family's layout is unknown: residual sites still work there.
BLOCK_PATHS: list[tuple[str, str, str]] = [
    ("llama-like", "model.layers", "model.norm"),
    ("gemma3-multimodal", "model.language_model.layers", "model.language_model.norm"),
    ("gpt2", "transformer.h", "transformer.ln_f"),
    ("gpt-neox", "gpt_neox.layers", "gpt_neox.final_layer_norm"),
    ("opt", "model.decoder.layers", "model.decoder.final_layer_norm"),
]


def _get(obj: object, path: str):
    for part in path.split("."):
        if not part:
            continue
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying HF model of a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _text_config(model: nn.Module):
    cfg = getattr(unwrap(model), "config", None)
    return getattr(cfg, "text_config", None) or cfg


@dataclass(frozen=True)
class Blocks:
    family: str
    layers: nn.ModuleList
    final_norm: nn.Module | None
    layout: Layout | None = None

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def find_blocks(model: nn.Module) -> Blocks:
    """Locate the transformer blocks and final norm of an HF causal LM (or raise a clear error)."""
    base = unwrap(model)
    model_type = getattr(_text_config(model), "model_type", "") or ""
    layout = LAYOUTS.get(model_type)
    if layout is not None:
        layout = _variant(layout, _text_config(model))
    candidates = [(layout.family, layout.layers, layout.final_norm)] if layout else []
    candidates += BLOCK_PATHS
    if layout is not None:  # gemma3 multimodal wrappers keep the text model one level down
        candidates.insert(1, (layout.family, "model.language_model.layers", "model.language_model.norm"))
    for family, layers_path, norm_path in candidates:
        layers = _get(base, layers_path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return Blocks(layout.family if layout else family, layers, _get(base, norm_path), layout)
    raise TypeError(
        f"cannot find the transformer blocks of {type(base).__name__}: probescope knows the layouts "
        f"{', '.join(p for _, p, _ in BLOCK_PATHS)}; add yours to probescope.core.sites.BLOCK_PATHS"
    )


def n_layers(model: nn.Module) -> int:
    """Number of transformer blocks."""
    return find_blocks(model).n_layers


def d_model(model: nn.Module) -> int:
    """Width of the residual stream."""
    cfg = _text_config(model)
    for key in ("hidden_size", "n_embd", "d_model"):
        if cfg is None:
            break
        if hasattr(cfg, key):
            return int(getattr(cfg, key))
    raise TypeError(f"cannot read the residual width from the config of {type(model).__name__}")


def n_heads(model: nn.Module) -> int:
    """Number of query heads per layer."""
    cfg = _text_config(model)
    for key in ("num_attention_heads", "n_head", "num_heads"):
        if hasattr(cfg, key):
            return int(getattr(cfg, key))
    raise TypeError(f"cannot read the number of attention heads from the config of {type(model).__name__}")


def check_layers(model: nn.Module, layers: "int | Sequence[int]") -> list[int]:
    """Validate layer indices (negative counts from the end) and return them as non-negative ints."""
    if isinstance(layers, int):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("no layers requested: pass at least one layer index, e.g. layers=[6]")
    n = n_layers(model)
    out = []
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"layer {layer!r} is not an int")
        if not -n <= layer < n:
            raise ValueError(f"layer {layer} is out of range: this model has {n} layers (0..{n - 1}, or -1 for the last)")
        out.append(layer % n)
    return out


def resolve_site(model: nn.Module, site: "str | int | Site") -> Site:
    """Parse `site` and check it against `model`: layer and head in range, the family's layout known where needed."""
    s = parse_site(site)
    if s.kind in MODULE_KINDS:
        return _resolve_module_site(model, s)
    if s.layer is None:
        return s
    try:
        layer = check_layers(model, [s.layer])[0]
    except ValueError as e:
        raise ValueError(f"site {site!r}: {e}") from None
    head = s.head
    if s.kind == "attn_head":
        h = n_heads(model)
        if not -h <= head < h:
            raise ValueError(f"site {site!r}: head {head} is out of range: this model has {h} query heads per layer "
                             f"(0..{h - 1})")
        head %= h
    if s.kind not in ("resid_pre", "resid_post"):
        lay = _layout(model, s)
        if s.kind == "resid_mid" and lay.parallel:
            raise ValueError(
                f"site {site!r} does not exist in a {lay.family} model: its blocks are parallel (attention and the "
                f"MLP both read resid_pre.{layer} and add to the residual together: resid_post = resid_pre + attn_out "
                f"+ mlp_out), so no residual stream lies between them; use resid_pre.{layer}, attn_out.{layer}, "
                f"mlp_in.{layer}, mlp_out.{layer} or resid_post.{layer}")
    return Site(s.kind, layer, head)


def _resolve_module_site(model: nn.Module, s: Site) -> Site:
    """A module site with its path checked and the block that holds the module (None outside the blocks)."""
    base = unwrap(model)
    try:
        mod = base.get_submodule(s.path)
    except AttributeError:
        parent, found = base, []
        for part in s.path.split("."):  # the deepest module of the path that exists: name its children
            child = getattr(parent, part, None)
            if not isinstance(child, nn.Module):
                break
            parent = child
            found.append(part)
        pre = ".".join(found) + "." if found else ""
        kids = ", ".join(pre + n for n, _ in list(parent.named_children())[:8])
        raise ValueError(f"site {s}: the model ({type(base).__name__}) has no module {s.path!r}; a module site takes "
                         f"a dotted path from `model.named_modules()`, e.g. {kids}") from None
    layer = None
    try:
        blocks = find_blocks(model).layers
    except TypeError:
        blocks = []
    for i, block in enumerate(blocks):
        if any(m is mod for m in block.modules()):
            layer = i
            break
    return Site(s.kind, layer, None, s.path)


def resolve_sites(model: nn.Module, sites: "str | int | Site | Sequence[str | int | Site]") -> list[Site]:
    """`resolve_site` for one site, a comma-separated string, or a sequence."""
    if isinstance(sites, str) and "," in sites:
        sites = [x for x in sites.split(",") if x.strip()]
    if isinstance(sites, (str, int, Site)):
        sites = [sites]
    sites = list(sites)
    if not sites:
        raise ValueError(f"no sites requested: pass at least one, e.g. ['resid_post.6'] ({GRAMMAR})")
    return [resolve_site(model, s) for s in sites]


def check_forward_order(model: nn.Module, read: "str | int | Site", predicted: "str | int | Site") -> tuple[Site, Site]:
    """Resolve a (read, predicted) pair of sites, as a transcoder uses them, and refuse a pair whose predicted site
    comes before the one read in the forward pass: nothing there depends on the input, so such a map learns nothing
    of the model's computation. The same site (an SAE) is fine; two module sites inside one block are not ordered."""
    a, b = resolve_site(model, read), resolve_site(model, predicted)
    n = n_layers(model)
    if a.kind in MODULE_KINDS or b.kind in MODULE_KINDS:
        before = a.layer is not None and b.layer is not None and b.layer < a.layer
    else:  # resid_pre.L is the tensor resid_post.L-1: one place in the forward
        def where(s: Site) -> tuple[int, int]:
            return (s.layer - 1, _STAGE["resid_post"]) if s.kind == "resid_pre" and s.layer else s.order(n)

        before = where(b) < where(a)
    if before:
        example = f"mlp_in.{a.layer} → mlp_out.{a.layer}" if a.layer is not None else "mlp_in.L → mlp_out.L"
        raise ValueError(f"the predicted site {b} comes before the site read, {a}, in the forward pass: a transcoder "
                         f"reads a site and predicts a later one (e.g. {example}); swap the two sites")
    return a, b


def _layout(model: nn.Module, site: Site) -> Layout:
    blocks = find_blocks(model)
    if blocks.layout is None:
        mt = getattr(_text_config(model), "model_type", "?")
        raise ValueError(
            f"site {site} needs the module layout of the model's family ({mt!r}), which probescope does not know; "
            f"resid_pre/resid_post/embed/logits work on any model. Known: {', '.join(sorted(LAYOUTS))}; add a "
            f"Layout for {mt!r} to probescope.core.sites.LAYOUTS"
        )
    return blocks.layout


def _module(parent: nn.Module, name: str, what: str, site: Site) -> nn.Module:
    m = _get(parent, name)
    if not isinstance(m, nn.Module):
        kids = ", ".join(n for n, _ in parent.named_children())
        raise ValueError(f"site {site}: the block has no {what} module {name!r} (its children: {kids}); "
                         f"fix the family's Layout in probescope.core.sites.LAYOUTS")
    return m


def site_module(model: nn.Module, site: "str | int | Site") -> nn.Module:
    """The module whose hook reads `site` (the MLP for mlp_*, the attention module for attn_*, the block otherwise)."""
    s = resolve_site(model, site)
    base = unwrap(model)
    if s.kind in MODULE_KINDS:
        return base.get_submodule(s.path)
    if s.kind == "embed":
        return base.get_input_embeddings()
    if s.kind == "logits":
        return base
    blocks = find_blocks(model)
    block = blocks.layers[s.layer]
    if s.kind in ("resid_pre", "resid_post"):
        return block
    lay = _layout(model, s)
    if s.kind in ("mlp_in", "mlp_out"):
        return _module(block, lay.mlp, "MLP", s)
    if s.kind == "resid_mid":  # the pre-MLP norm reads it (olmo2 has none: the MLP does)
        return _module(block, lay.mid_norm or lay.mlp, "pre-MLP norm", s)
    attn = _module(block, lay.attn, "attention", s)
    if s.kind == "attn_head":
        return _module(attn, lay.o_proj, "output projection", s)
    return attn


def head_weight(model: nn.Module, layer: int) -> tuple[torch.Tensor, int]:
    """o_proj's weight as [d_model, heads * head_dim] (gpt2's Conv1D transposed) and the head width."""
    lay = _layout(model, Site("attn_head", layer, 0))
    proj = _module(_module(find_blocks(model).layers[layer], lay.attn, "attention", Site("attn_out", layer)),
                   lay.o_proj, "output projection", Site("attn_head", layer, 0))
    w = proj.weight.T if lay.conv1d else proj.weight
    return w, w.shape[1] // n_heads(model)


def head_contributions(z: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
    """[..., heads, d]: each head's z slice through its columns of o_proj (`w` [d, heads*hd])."""
    hd = w.shape[1] // n
    zs = z.reshape(*z.shape[:-1], n, hd)
    return torch.einsum("...hk,dhk->...hd", zs, w.to(z.dtype).reshape(w.shape[0], n, hd))


# ----------------------------------------------------------------------------------------------------------
# Hooks: the one place probescope registers them.
# ----------------------------------------------------------------------------------------------------------


def _split(output):
    if isinstance(output, tuple):
        return output[0], output[1:]
    if hasattr(output, "logits") and not isinstance(output, torch.Tensor):
        return output.logits, output
    return output, None


def _join(value: torch.Tensor, rest, original):
    if isinstance(original, tuple):
        return (value, *rest)
    if rest is not None and not isinstance(original, torch.Tensor):  # a ModelOutput: logits replaced
        original.logits = value
        return original
    return value


def _apply(fns: Sequence[SiteFn], x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    changed = False
    for fn in fns:
        new = fn(x)
        if new is not None:
            x, changed = new, True
    return x, changed


@contextmanager
def eager_attention(model: nn.Module, reason: str = "attn_pattern") -> Iterator[None]:
    """Run the model with eager attention inside (and say so if it was not); restore the implementation after."""
    base = unwrap(model)
    old = getattr(base.config, "_attn_implementation", None)
    if old in (None, "eager"):
        yield
        return
    warnings.warn(f"{reason} needs eager attention: this forward runs with attn_implementation='eager' "
                  f"(the model's {old!r} is restored after; other sites never change it)", stacklevel=3)
    base.set_attn_implementation("eager")
    try:
        yield
    finally:
        base.set_attn_implementation(old)


@contextmanager
def site_hooks(
    model: nn.Module,
    edits: "Mapping[str | int | Site, SiteFn | Sequence[SiteFn]]",
    stop_after: "str | int | Site | bool | None" = None,
) -> Iterator[list[Site]]:
    """Run `edits[site](tensor)` at each named site for every forward inside; yields the resolved sites.

    An edit returns a replacement tensor (same shape) or None (read only). `stop_after` — a site, or True for the
    deepest site in `edits` — raises `StopForward` once that site has run (catch it with `stop_forward()`), so later
    blocks cost nothing. Hooks are removed when the context exits, whatever happens inside.
    """
    fns: dict[Site, list[SiteFn]] = {}
    for key, fn in edits.items():
        s = resolve_site(model, key)
        fns.setdefault(s, []).extend(list(fn) if isinstance(fn, (list, tuple)) else [fn])
    stop: Site | None = None
    try:
        nl = n_layers(model)
    except TypeError:  # blocks unknown: only module sites (and embed/logits) resolved above
        nl = 0
    if stop_after is True:
        stop = max(fns, key=lambda s: s.order(nl)) if fns else None
    elif stop_after not in (None, False):
        stop = resolve_site(model, stop_after)
    if stop is not None and stop.kind in MODULE_KINDS:  # modules of a block run in no order we know: its end
        stop = Site("resid_post", stop.layer) if stop.layer is not None else Site("logits")
    handles: list = []
    needs_eager = any(s.kind == "attn_pattern" for s in fns) or (stop is not None and stop.kind == "attn_pattern")
    with ExitStack() as stack:
        if needs_eager:
            stack.enter_context(eager_attention(model))
        try:
            for s, f in sorted(fns.items(), key=lambda kv: kv[0].order(nl)):
                handles.extend(_register(model, s, f, raise_stop=False))
            if stop is not None:
                handles.extend(_register(model, stop, [], raise_stop=True))
            yield sorted(fns, key=lambda s: s.order(nl))
        finally:
            for h in handles:
                h.remove()


def _register(model: nn.Module, s: Site, fns: list[SiteFn], raise_stop: bool) -> list:
    """Hooks for one site (plain PyTorch hooks on the model's own modules)."""
    mod = site_module(model, s)

    def finish(changed: bool):
        if raise_stop:
            raise StopForward(str(s))

    if s.kind in ("resid_pre", "mlp_in", "module_in"):
        # the tensor is the module's first input (positional or hidden_states=)
        def pre(module, args, kwargs):
            if args:
                x, rest = args[0], args[1:]
            elif "hidden_states" in kwargs:
                x, rest = kwargs["hidden_states"], None
            else:
                raise ValueError(f"site {s}: the module got no positional input nor hidden_states= (its keyword "
                                 f"inputs: {', '.join(kwargs) or 'none'}); read its output or another module")
            x, changed = _apply(fns, x)
            finish(changed)
            if not changed:
                return None
            if rest is not None:
                return (x, *rest), kwargs
            return args, {**kwargs, "hidden_states": x}

        return [mod.register_forward_pre_hook(pre, with_kwargs=True)]
    if s.kind == "resid_mid":
        return _register_resid_mid(model, s, fns, finish)
    if s.kind == "attn_head":
        return _register_head(model, s, fns, finish)
    if s.kind == "attn_pattern":
        def pat(module, args, output):
            w = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if w is None:
                raise RuntimeError(f"site {s}: the attention module returned no weights; the model must run with "
                                   "eager attention (probescope switches it for attn_pattern: is this a custom attention?)")
            _, changed = _apply(fns, w)
            if changed:
                raise ValueError(f"site {s} is read only: an edit returned a tensor; edit attn_head/attn_out instead")
            finish(False)
            return None

        return [mod.register_forward_hook(pat)]

    # module outputs: embed, attn_out, mlp_out, resid_post, logits, module_out
    copy = s.kind == "mlp_out" and _layout(model, s).inplace_mlp_out

    def post(module, args, output):
        x, rest = _split(output)
        if copy:  # the block adds attention's output into this tensor in place: edit functions see a copy
            x = x.clone()
        x, changed = _apply(fns, x)
        if copy and changed:  # and what goes on is not a tensor they were shown
            x = x.clone()
        out = _join(x, rest, output) if changed else None
        finish(changed)
        return out

    return [mod.register_forward_hook(post)]


def _register_head(model: nn.Module, s: Site, fns: list[SiteFn], finish) -> list:
    """Head contributions from o_proj's input; an edit adds (new − old) of its head to o_proj's output.

    Read functions marked `fn.detached = True` get the head's value outside the autograd graph (cheap in a
    backward pass that only needs gradients elsewhere)."""
    w, hd = head_weight(model, s.layer)
    mod = site_module(model, s)
    state: dict[str, torch.Tensor] = {}

    detached = bool(fns) and all(getattr(fn, "detached", False) for fn in fns)

    def pre(module, args):
        z = args[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detached):
            sl = z[..., s.head * hd:(s.head + 1) * hd]
            wh = w[:, s.head * hd:(s.head + 1) * hd]
            state["h"] = sl @ wh.to(z.dtype).T
        return None

    def post(module, args, output):
        h = state.pop("h")
        new, changed = _apply(fns, h)
        if changed:
            out = output + (new - h).to(output.dtype)
        elif h.requires_grad:
            out = output + (h - h.detach())  # adds exactly 0, so gradients reach the head's tensor
        else:
            out = None
        finish(changed)
        return out

    return [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]


def _register_resid_mid(model: nn.Module, s: Site, fns: list[SiteFn], finish) -> list:
    """Edit resid_mid exactly where attention is added to the residual: added' = f(pre + added) − pre."""
    lay = _layout(model, s)
    block = find_blocks(model).layers[s.layer]
    attn = _module(block, lay.attn, "attention", s)
    adder = _module(block, lay.attn_resid, "post-attention norm", s) if lay.attn_resid else attn
    scale = float(getattr(_text_config(model), lay.resid_scale)) if lay.resid_scale else 1.0
    state: dict[str, torch.Tensor] = {}

    def block_pre(module, args, kwargs):
        state["pre"] = args[0] if args else kwargs["hidden_states"]
        return None

    def add_post(module, args, output):
        added, rest = _split(output)
        pre = state.pop("pre")
        mid = pre + added if scale == 1.0 else pre + added * scale  # as the block adds it (granite scales)
        new, changed = _apply(fns, mid)
        finish(changed)
        if changed:
            return _join((new - pre) if scale == 1.0 else (new - pre) / scale, rest, output)
        if mid.requires_grad:  # adds exactly 0, so gradients reach the tensor the edit functions saw
            zero = mid - mid.detach()
            return _join(added + (zero if scale == 1.0 else zero / scale), rest, output)
        return None

    return [block.register_forward_pre_hook(block_pre, with_kwargs=True), adder.register_forward_hook(add_post)]


@contextmanager
def stop_forward() -> Iterator[None]:
    """Swallow the `StopForward` raised by `site_hooks(..., stop_after=...)`."""
    try:
        yield
    except StopForward:
        pass


@contextmanager
def watch_modules(modules: Sequence[nn.Module], fn: Callable[[int, tuple, object], None]) -> Iterator[None]:
    """Inside, every forward of `modules[i]` calls `fn(i, args, output)` (it observes; it cannot edit): for checks of a
    module's call signature, such as whether an MLP returns one tensor shaped like its input."""
    handles = [m.register_forward_hook(lambda _m, a, o, i=i: fn(i, a, o)) for i, m in enumerate(modules)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


GradFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def tap_grad(tensor: torch.Tensor, fn: GradFn):
    """The gradient tap: `fn(grad)` runs when the backward reaches `tensor` and may return a replacement gradient
    (None keeps it). Nothing is registered (None returned) when `tensor` needs no gradient; else the handle."""
    if not tensor.requires_grad:
        return None
    return tensor.register_hook(fn)


def module_path(model: nn.Module, module: nn.Module) -> str:
    """The dotted path of `module` in the model (as a module site takes it: `module_out:` + path)."""
    for name, m in unwrap(model).named_modules():
        if m is module:
            return name
    raise ValueError(f"module {type(module).__name__} is not part of the model {type(unwrap(model)).__name__}")


@contextmanager
def blocks_from(model: nn.Module, start: int) -> Iterator[None]:
    """Inside, the model's forward runs blocks `start`.. only (pass the residual stream entering block `start` as
    `inputs_embeds` to the module that holds the blocks); the full list of blocks is restored on exit."""
    blocks = find_blocks(model)
    start = check_layers(model, [start])[0]
    parent_path, _, attr = module_path(model, blocks.layers).rpartition(".")
    parent = unwrap(model).get_submodule(parent_path)
    setattr(parent, attr, nn.ModuleList(list(blocks.layers)[start:]))
    try:
        yield
    finally:
        setattr(parent, attr, blocks.layers)


# ----------------------------------------------------------------------------------------------------------
# Reading: activations at named sites for one batch.
# ----------------------------------------------------------------------------------------------------------


def run_model(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> None:
    """One forward of `ids` (an all-ones mask passes as None: HF's plain causal path, as a bare call takes)."""
    device = next(model.parameters()).device
    am = None if mask is None or bool(mask.all()) else mask.to(device)
    model(input_ids=ids.to(device), attention_mask=am, use_cache=False)


def read_sites(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    sites: "Sequence[str | int | Site]",
    grad: bool = False,
) -> dict[Site, torch.Tensor]:
    """Activations at each site for one batch, stopping the forward after the deepest ([B, T, d]; attn_pattern
    [B, heads, T, T]). With `grad=True` the tensors stay in the graph (no stop: the caller runs the backward)."""
    resolved = resolve_sites(model, sites)
    got: dict[Site, list[torch.Tensor]] = {s: [] for s in resolved}

    def reader(s: Site) -> SiteFn:
        def fn(x: torch.Tensor) -> None:
            got[s].append(x if grad else x.detach())

        return fn

    with torch.set_grad_enabled(grad):
        with site_hooks(model, {s: reader(s) for s in resolved}, stop_after=not grad):
            with stop_forward():
                run_model(model, input_ids, attention_mask)
    return {s: got[s][0] for s in resolved}


# ----------------------------------------------------------------------------------------------------------
# Linearised forward: attention patterns and norm scales frozen at one prompt's values (circuit tracing).
# ----------------------------------------------------------------------------------------------------------

FROZEN_ATTENTION = "probescope_frozen"
_FROZEN_PATTERNS: dict[int, torch.Tensor] = {}  # id(attention module) -> [1, heads, T, T] while a context is open


def _frozen_attention(module, query, key, value, attention_mask=None, *args, **kwargs):
    """An HF attention function that ignores queries and keys: output = recorded pattern @ values."""
    p = _FROZEN_PATTERNS.get(id(module))
    if p is None:
        raise RuntimeError("frozen attention ran outside `linearized(...)`: the model's attention implementation was "
                           f"left at {FROZEN_ATTENTION!r}; call model.set_attn_implementation('eager') to restore it")
    groups = query.shape[1] // value.shape[1]
    if p.shape[-1] != value.shape[-2] or p.shape[-2] != query.shape[-2]:
        raise ValueError(f"linearized: the recorded patterns cover {p.shape[-1]} tokens but this forward has "
                         f"{value.shape[-2]}: run the same prompt (batch copies are fine) inside the context")
    if p.shape[0] == 1 and p.shape[1] == query.shape[1]:
        # one pattern for every copy of the prompt: per key/value head, its query heads' patterns stacked [G·T, T]
        # times the values of every copy side by side [T, B·hd] — a few large products instead of B·heads tiny
        # ones, no repeated values, and the same in the backward pass (attribution graphs run it for every batch)
        b, kv, t, hd = value.shape
        heads = p[0].to(value.dtype).reshape(kv, groups * p.shape[-2], t)
        out = heads @ value.permute(1, 2, 0, 3).reshape(kv, t, b * hd)  # [kv, G·T_q, B·hd]
        return out.reshape(kv * groups, p.shape[-2], b, hd).permute(2, 1, 0, 3).contiguous(), p
    v = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    out = torch.matmul(p.to(v.dtype), v).transpose(1, 2).contiguous()
    return out, p


def _norm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every normalisation module of the model (LayerNorm or an RMSNorm-like class), by name."""
    out = []
    for name, m in unwrap(model).named_modules():
        cls = type(m).__name__
        if isinstance(m, nn.LayerNorm) or cls.endswith("RMSNorm") or cls.endswith("LayerNorm"):
            out.append((name, m))
    return out


def _norm_linear(m: nn.Module, x0: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The norm's map with its scale frozen at input `x0`: v ↦ w ⊙ (centred v) · s(x0) (no bias)."""
    eps = getattr(m, "variance_epsilon", getattr(m, "eps", None))
    if eps is None:
        raise TypeError(f"cannot freeze the scale of {type(m).__name__}: it has no eps/variance_epsilon attribute; "
                        "add its formula to probescope.core.sites._norm_linear")
    x = x0.float()
    center = isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("LayerNorm")
    if center:
        s = torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + eps)
        w = m.weight.detach().float() if getattr(m, "weight", None) is not None else torch.ones(x.shape[-1])
    else:
        s = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        with torch.no_grad():  # the effective gain (llama: weight, gemma: 1 + weight) read from the module itself
            one = torch.ones(x.shape[-1], dtype=m.weight.dtype if hasattr(m, "weight") else torch.float32,
                             device=x.device)
            w = m(one).float() * (1.0 + eps) ** 0.5

    def lin(v: torch.Tensor) -> torch.Tensor:
        v = v.float()
        if center:
            v = v - v.mean(-1, keepdim=True)
        return w * v * s

    return lin


@dataclass
class Linearization:
    """What `linearized` recorded on its prompt: attention patterns per layer ([1, heads, T, T]) and each norm's
    input and output."""

    input_ids: torch.Tensor
    patterns: dict[int, torch.Tensor]
    norm_io: dict[str, tuple[torch.Tensor, torch.Tensor]]


FREEZE = ("all", "attention", "norms")


@contextmanager
def linearized(model: nn.Module, input_ids: torch.Tensor, recorded: "Linearization | None" = None,
               freeze: str = "all") -> Iterator[Linearization]:
    """Run every forward inside linearised at `input_ids` ([1, T]): attention patterns fixed at their values on that
    prompt (queries and keys no longer matter) and every norm's scale frozen (output = y0 + w ⊙ (x − x0)·s0). The
    residual stream is then linear in what is added to it, which is what attribution graphs need. Forwards inside
    must run the same T tokens (a batch of copies is fine). Attention implementation and hooks are restored on exit.
    `recorded` (what an earlier context on the same prompt yielded) skips the recording forward. `freeze`
    "attention" or "norms" freezes only that half (the other is recomputed: not linear; a diagnostic of which half
    a graph's frozen-world claims depend on)."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"linearized: pass one prompt as input_ids [1, T], not shape {tuple(input_ids.shape)}")
    if freeze not in FREEZE:
        raise ValueError(f"linearized: freeze={freeze!r}; use one of {', '.join(FREEZE)}")
    from transformers import AttentionInterface

    AttentionInterface.register(FROZEN_ATTENTION, _frozen_attention)
    base = unwrap(model)
    blocks = find_blocks(model)
    lay = _layout(model, Site("attn_out", 0))
    attns = [_module(b, lay.attn, "attention", Site("attn_out", i)) for i, b in enumerate(blocks.layers)]
    norms = _norm_modules(model)
    patterns: dict[int, torch.Tensor] = {} if recorded is None else recorded.patterns
    norm_io: dict[str, tuple[torch.Tensor, torch.Tensor]] = {} if recorded is None else recorded.norm_io
    handles: list = []

    def rec_pattern(i: int):
        def fn(module, args, output):
            w = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if w is None:
                raise RuntimeError(f"linearized: attention of layer {i} returned no weights under eager attention")
            patterns[i] = w.detach()
        return fn

    def rec_norm(name: str):
        def fn(module, args, output):
            norm_io[name] = (args[0].detach(), output.detach())
        return fn

    if recorded is not None and not torch.equal(recorded.input_ids.cpu(), input_ids.cpu()):
        raise ValueError("linearized: `recorded` was taken on another prompt: record this one (recorded=None)")
    try:
        for i, a in enumerate(attns if recorded is None else []):
            handles.append(a.register_forward_hook(rec_pattern(i)))
        for name, m in (norms if recorded is None else []):
            handles.append(m.register_forward_hook(rec_norm(name)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if recorded is None:
                with eager_attention(model, "linearized"), torch.no_grad():
                    run_model(model, input_ids, None)
    finally:
        for h in handles:
            h.remove()
        handles.clear()
    lins = {name: _norm_linear(m, norm_io[name][0]) for name, m in norms if name in norm_io}

    def frozen_norm(name: str):
        x0, y0 = norm_io[name]
        lin = lins[name]

        def fn(module, args, output):
            x = args[0]
            return (y0 + lin(x - x0)).to(output.dtype)
        return fn

    old = getattr(base.config, "_attn_implementation", None)
    try:
        if freeze in ("all", "attention"):
            for i, a in enumerate(attns):
                _FROZEN_PATTERNS[id(a)] = patterns[i]
        for name, m in (norms if freeze in ("all", "norms") else []):
            if name in norm_io:
                handles.append(m.register_forward_hook(frozen_norm(name)))
        if freeze in ("all", "attention"):
            base.set_attn_implementation(FROZEN_ATTENTION)
        yield Linearization(input_ids, patterns, norm_io)
    finally:
        for h in handles:
            h.remove()
        for a in attns:
            _FROZEN_PATTERNS.pop(id(a), None)
        if old is not None:
            base.set_attn_implementation(old)
