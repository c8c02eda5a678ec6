"""The modules and forward overrides the named patches (:mod:`backend.arch.patches`) put into a model.

Plain ``nn.Module`` code with parameters and buffers only: no hooks, no per-call Python state, no Python branch
on a tensor's value (safe under ``torch.func.functional_call`` and ``vmap``). Imported when a patch is applied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NormedLinear(nn.Linear):
    """A linear projection whose output is normalised by ``norm``: per head (the norm spans ``head_dim``; the output
    is viewed as heads of that width) or over the whole width (``head_dim`` 0). It keeps the ``weight``/``bias``
    of the projection it replaces (same names); the norm's weight is ``<proj>.norm.weight``."""

    def __init__(self, linear: nn.Linear, norm: nn.Module, head_dim: int):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.norm = norm
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if not self.head_dim:
            return self.norm(y)
        return self.norm(y.reshape(*y.shape[:-1], -1, self.head_dim)).reshape(y.shape)


class PartialRotary(nn.Module):
    """RoPE on ``rotated`` of each head's ``head_dim`` dimensions. ``inner`` (the model's own rotary class, built for
    ``rotated`` dimensions, so its frequencies are theta^(-2j/rotated)) gives cos/sin, padded to the full head with
    the identity (cos 1, sin 0). With transformers' rotate-half layout this rotates the pairs (j, j + head_dim/2)
    for j < rotated/2 and passes the other dimensions through: the usual partial rotary (GPT-NeoX, GLM) up to a
    fixed permutation of each head's dimensions, which the learned projections absorb."""

    def __init__(self, inner: nn.Module, head_dim: int, rotated: int):
        super().__init__()
        self.inner = inner
        self.pad = (head_dim - rotated) // 2

    def forward(self, x, position_ids, *args, **kwargs):
        cos, sin = self.inner(x, position_ids, *args, **kwargs)
        c1, c2 = cos.chunk(2, dim=-1)
        s1, s2 = sin.chunk(2, dim=-1)
        one = c1.new_ones(*c1.shape[:-1], self.pad)
        zero = s1.new_zeros(*s1.shape[:-1], self.pad)
        return torch.cat([c1, one, c2, one], dim=-1), torch.cat([s1, zero, s2, zero], dim=-1)


class NoPE:
    """Mixed into an attention class: the rotation it is handed becomes the identity (cos 1, sin 0), so the layer
    sees no positions but the causal mask. ``use_rope`` says so, as SmolLM3's and Llama 4's attention do."""

    use_rope = False

    def forward(self, *args, **kwargs):
        cos, sin = kwargs["position_embeddings"]
        kwargs["position_embeddings"] = (torch.ones_like(cos), torch.zeros_like(sin))
        return super().forward(*args, **kwargs)


class Placed:
    """Mixed into a decoder-block class: its norms placed as the class attribute ``_placement`` says, around the
    block's own attention and MLP (``_mlp_name``)::

        pre:      h = x + attn(input_layernorm(x));                      out = h + mlp(post_attention_layernorm(h))
        post:     h = x + post_attention_layernorm(attn(x));             out = h + post_feedforward_layernorm(mlp(h))
        sandwich: h = x + post_attention_layernorm(attn(input_layernorm(x)))
                  out = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))

    (the names Llama, OLMo 2 and Gemma 3 give these norms). Keyword arguments go to the attention unchanged."""

    _placement = "pre"
    _mlp_name = "mlp"

    def forward(self, hidden_states, **kwargs):
        p = self._placement
        residual = hidden_states
        if p != "post":
            hidden_states = self.input_layernorm(hidden_states)
        hidden_states = self.self_attn(hidden_states=hidden_states, **kwargs)[0]
        if p != "pre":
            hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = residual + hidden_states
        residual = hidden_states
        if p == "pre":
            hidden_states = self.post_attention_layernorm(hidden_states)
        elif p == "sandwich":
            hidden_states = self.pre_feedforward_layernorm(hidden_states)
        out = getattr(self, self._mlp_name)(hidden_states)
        hidden_states = out[0] if isinstance(out, tuple) else out
        if p != "pre":
            hidden_states = self.post_feedforward_layernorm(hidden_states)
        return residual + hidden_states
