"""Decoder-layer capture and on-device pooling, shared by every Video-LLM family.

The decoder runs once over the prompt ("prefill") and then once per generated token. Forward hooks on
the selected decoder layers see each layer's output (the residual stream, *before* the model's final
norm) and reduce it on the device, so a full ``[B, P, D]`` state never outlives its layer:

* prefill: one ``bmm`` with a row-normalised pooling matrix ``[B, S_old + 2, P]`` whose rows are
  ``S_old`` contiguous time groups of media tokens, the mean of the prompt tokens that follow the
  media, and a one-hot on the last prompt token (the state that emits the first new token; used only
  when an item generates nothing). Padding and the chat-template prefix get weight 0.
* decode: the single new position ``[B, D]`` per step.

``output_hidden_states=True`` would instead keep all ``L + 1`` full states of every call until the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from linkedout.backbones.frames import time_group_ranges

LayerSpec = str | int | Sequence[int]

# float16 overflows at 65504; a few LLM channels ("massive activations") can approach that.
FP16_MAX = 65504.0


def resolve_layers(spec: LayerSpec, num_layers: int) -> tuple[int, ...]:
    """Decoder layer indices (0-based, increasing, unique) from a spec.

    * a sequence of ints (negative counts from the end, ``-1`` = last layer) or one int;
    * ``"all"``; ``"last:N"`` (the N deepest layers); ``"every:K"`` (every K-th layer counted back from
      the last one, so the last layer is always included: ``every:4`` of 24 -> 3, 7, ..., 23);
    * ``"3,7,-1"`` (a comma list, handy on a command line).
    """
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            idx: list[int] = list(range(num_layers))
        elif s.startswith("last:"):
            n = int(s.split(":", 1)[1])
            if not 1 <= n <= num_layers:
                raise ValueError(f"last:N needs 1 <= N <= {num_layers}, got {n}")
            idx = list(range(num_layers - n, num_layers))
        elif s.startswith("every:"):
            k = int(s.split(":", 1)[1])
            if k < 1:
                raise ValueError(f"every:K needs K >= 1, got {k}")
            idx = [i for i in range(num_layers) if (num_layers - 1 - i) % k == 0]
        else:
            idx = [int(x) for x in s.split(",") if x.strip()]
            return resolve_layers(idx, num_layers)
        return tuple(idx)
    raw = [spec] if isinstance(spec, int) else list(spec)
    out = set()
    for i in raw:
        j = int(i) + num_layers if int(i) < 0 else int(i)
        if not 0 <= j < num_layers:
            raise ValueError(f"layer {i} out of range for a decoder with {num_layers} layers")
        out.add(j)
    if not out:
        raise ValueError("select at least one layer")
    return tuple(sorted(out))


def pooling_matrix(
    unit_ids: torch.Tensor, num_units: Sequence[int], attention_mask: torch.Tensor, summary_tokens: int
) -> torch.Tensor:
    """Row-normalised float32 ``[B, summary_tokens + 2, P]`` pooling weights.

    ``unit_ids[b, p]`` is the time unit (frame, or temporal patch for Qwen) of a media token and -1 for
    any other token; ``num_units[b]`` the number of units of item b. Rows: ``summary_tokens`` contiguous
    time groups of media tokens (means), then the mean of the non-media tokens *after the first media
    token* (those before it, e.g. a system prompt, cannot attend to the item in a causal decoder, so
    they are the same for every item and carry no information), then a one-hot on the last position.
    Padding (``attention_mask == 0``) never gets weight.
    """
    b, p = unit_ids.shape
    device = unit_ids.device
    valid = attention_mask.bool()
    weights = torch.zeros(b, summary_tokens + 2, p, dtype=torch.float32, device=device)
    for i in range(b):
        media = (unit_ids[i] >= 0) & valid[i]
        if not media.any():
            raise ValueError("an item has no media tokens: the prompt lost its video placeholder")
        for g, (start, end) in enumerate(time_group_ranges(int(num_units[i]), summary_tokens)):
            weights[i, g] = (media & (unit_ids[i] >= start) & (unit_ids[i] < end)).float()
        first_media = int(media.nonzero()[0])
        after = torch.arange(p, device=device) > first_media
        weights[i, summary_tokens] = (~media & valid[i] & after).float()
    weights[:, summary_tokens + 1, p - 1] = 1.0  # left padding: the last position is always real
    return weights / weights.sum(-1, keepdim=True).clamp_min(1.0)


@dataclass
class LayerCapture:
    """Forward hooks on ``layers[i]`` for i in ``indices``, active inside a ``with`` block.

    The first call of each hooked layer is the prefill (reduced with ``pool``); every later call is one
    decode step whose single position is kept. Everything stays on the model's device in float32.
    """

    layers: nn.ModuleList
    indices: tuple[int, ...]
    pool: torch.Tensor  # [B, S, P] from pooling_matrix
    prefill: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, S, D]
    steps: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # layer -> K x [B, D]
    _handles: list = field(default_factory=list)

    def __enter__(self) -> LayerCapture:
        for i in self.indices:
            self._handles.append(self.layers[i].register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, index: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            # transformers 5 decoder layers return a tensor; older ones a tuple (hidden, ...).
            h = output[0] if isinstance(output, tuple) else output
            if index not in self.prefill:
                if h.shape[1] != self.pool.shape[-1]:
                    raise RuntimeError(f"prefill length {h.shape[1]} != prompt length {self.pool.shape[-1]}")
                # float32 so that bf16 states are not rounded twice (bf16 mean, then fp16 storage);
                # results gather on the pool's device (layers may be spread over GPUs by a device_map)
                pooled = torch.bmm(self.pool.to(h.device), h.float())
                self.prefill[index] = pooled.to(self.pool.device)
            else:
                self.steps.setdefault(index, []).append(h[:, -1].float().to(self.pool.device))

        return hook

    def old_tokens(self) -> torch.Tensor:
        """``[B, L, S_old + 2, D]`` pooled prefill states, layers in ``indices`` order."""
        return torch.stack([self.prefill[i] for i in self.indices], dim=1)

    def new_tokens(self, k: int) -> torch.Tensor:
        """``[B, L, k, D]`` states of the first k generated tokens (zeros where no step ran)."""
        first = self.prefill[self.indices[0]]
        b, d = first.shape[0], first.shape[-1]
        out = torch.zeros(b, len(self.indices), k, d, device=first.device)
        for li, i in enumerate(self.indices):
            for j, h in enumerate(self.steps.get(i, [])[:k]):
                out[:, li, j] = h
        return out


def new_token_mask(generated: torch.Tensor, k: int, eos_ids: Sequence[int]) -> torch.Tensor:
    """``[B, k]`` bool: generated token j counts if neither it nor an earlier one is an end token.

    ``generated`` are the ids after the prompt (``generate`` pads finished rows, and may stop early).
    """
    b = generated.shape[0]
    ids = torch.full((b, k), -1, dtype=torch.long, device=generated.device)
    n = min(k, generated.shape[1])
    ids[:, :n] = generated[:, :n]
    is_end = torch.zeros_like(ids, dtype=torch.bool)
    for e in eos_ids:
        is_end |= ids == int(e)
    is_end |= ids < 0
    return torch.cumsum(is_end.long(), dim=1) == 0


def summarise_new(
    states: torch.Tensor, mask: torch.Tensor, fallback: torch.Tensor, keep: bool
) -> torch.Tensor:
    """Pool generated-token states ``[B, L, K, D]`` with validity ``[B, K]``.

    ``keep=False``: ``[B, L, 1, D]`` mean of the valid tokens. ``keep=True``: ``[B, L, K, D]`` with
    invalid slots (after an end token) set to that mean, so a mean over slots equals the mean over valid
    tokens. An item with no valid token (it ended at once) uses ``fallback`` ``[B, L, D]``: the state of
    the last prompt token, which is what produced the end token.
    """
    m = mask[:, None, :, None].to(states.dtype)
    count = m.sum(2)
    mean = (states * m).sum(2) / count.clamp_min(1.0)
    mean = torch.where(count > 0, mean, fallback)
    if not keep:
        return mean[:, :, None]
    return torch.where(m.bool(), states, mean[:, :, None])


def to_cpu_fp16(x: torch.Tensor) -> torch.Tensor:
    """Clamp to the float16 range (no inf from a massive activation) and move to the CPU."""
    return x.clamp(-FP16_MAX, FP16_MAX).to(device="cpu", dtype=torch.float16)
