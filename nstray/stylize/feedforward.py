"""Trained feed-forward styles: the checkpoint format ``nstray train-style`` writes, and the loader the plan uses.

A checkpoint is one file of plain tensors, dicts, strings and numbers (``torch.load(weights_only=True)``):

- ``kind: "johnson"`` — a whole :class:`~nstray.models.johnson.JohnsonNet` for one style:
  ``{"format", "version", "kind", "arch": {"channels", "res_blocks"}, "state_dict", "meta"}``;
- ``kind: "cin"`` — one new style for the multi-style CIN network (Dumoulin et al.): only its
  γ/β, one ``[C]`` vector per conditional instance norm (a few hundred numbers per layer), plus the
  identity of the base network they were trained against:
  ``{"format", "version", "kind", "base": {"weights", "sha256", "num_styles"}, "gamma": {layer: [C]},
  "beta": {layer: [C]}, "meta"}``. Loading appends the new row to every layer's ``[S, C]`` table of
  the base network (checked against ``sha256``) and uses it with one-hot weights on index ``S``.

``meta`` holds what the training run knew (style image, step, size, loss weights); nothing reads it
back but people and manifests.

:func:`build_feedforward` returns a network with ``forward(x [B,3,H,W] in [0,1]) -> [B,3,H,W]`` either
way, so :class:`~nstray.stylize.parts.PartStylizer` runs every checkpoint alike. Files are read at the
edge (:func:`nstray.assets.read_checkpoint`: ``s3://`` checkpoints fresh each time, not through the weights
cache, which is keyed by URI: a run that goes on training rewrites the same URI).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from nstray.models.johnson import JohnsonNet, johnson_from_checkpoint
from nstray.models.multistyle import ConditionalInstanceNorm2d, MultiStyleNet

__all__ = [
    "FORMAT",
    "VERSION",
    "FeedforwardError",
    "CINStyleNet",
    "cin_norm_names",
    "johnson_checkpoint",
    "cin_checkpoint",
    "append_style",
    "check_checkpoint",
    "build_feedforward",
]

FORMAT = "nstray.feedforward"
VERSION = 1


class FeedforwardError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file and the reason."""


def cin_norm_names(model: MultiStyleNet) -> list[str]:
    """Module names of the conditional instance norms of ``model``, in forward order (``contract.0.norm`` …)."""
    return [name for name, m in model.named_modules() if isinstance(m, ConditionalInstanceNorm2d)]


def johnson_checkpoint(model: JohnsonNet, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict of a trained Johnson network (tensors cloned to the CPU)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": "johnson",
        "arch": model.arch(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }


def cin_checkpoint(
    gamma: Mapping[str, Tensor],
    beta: Mapping[str, Tensor],
    *,
    base: str,
    base_sha256: str,
    num_styles: int,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of a new CIN style: its γ/β per norm layer and the base weights' identity."""
    if set(gamma) != set(beta):
        raise ValueError("gamma and beta must name the same layers")
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": "cin",
        "base": {"weights": str(base), "sha256": str(base_sha256), "num_styles": int(num_styles)},
        "gamma": {k: v.detach().float().cpu().reshape(-1).clone() for k, v in gamma.items()},
        "beta": {k: v.detach().float().cpu().reshape(-1).clone() for k, v in beta.items()},
        "meta": dict(meta or {}),
    }


def append_style(base: MultiStyleNet, gamma: Mapping[str, Tensor], beta: Mapping[str, Tensor]) -> MultiStyleNet:
    """A copy of ``base`` with one more style (index ``base.num_styles``) whose γ/β are given per norm layer.

    The base's convolutions and its ``S`` style tables are copied unchanged.
    """
    names = cin_norm_names(base)
    missing = [n for n in names if n not in gamma or n not in beta]
    extra = sorted(set(gamma) - set(names))
    if missing or extra:
        raise FeedforwardError(f"the new style's γ/β do not fit the base network: missing {missing[:3]}, "
                               f"unknown {extra[:3]} (was it trained against another base?)")
    state = base.state_dict()
    for n in names:
        g, b = state[f"{n}.gamma"], state[f"{n}.beta"]
        ng, nb = gamma[n].reshape(-1), beta[n].reshape(-1)
        if ng.shape[0] != g.shape[1] or nb.shape[0] != b.shape[1]:
            raise FeedforwardError(f"{n}: the new style has {ng.shape[0]} channels, the base {g.shape[1]}")
        state[f"{n}.gamma"] = torch.cat([g, ng.to(g)[None]])
        state[f"{n}.beta"] = torch.cat([b, nb.to(b)[None]])
    model = MultiStyleNet(num_styles=base.num_styles + 1, channels=base.contract[0].conv.out_channels,
                          res_blocks=len(base.res))
    model.load_state_dict(state, strict=True)
    model.to(memory_format=torch.channels_last)
    return model.eval()


class CINStyleNet(nn.Module):
    """A multi-style network used with one style: ``forward(x) = net(x, one_hot(index))``.

    ``net`` and ``index`` are public, so callers can also use the style in per-pixel blends.
    """

    def __init__(self, net: MultiStyleNet, index: int) -> None:
        super().__init__()
        if not 0 <= index < net.num_styles:
            raise ValueError(f"style index {index} is out of range for {net.num_styles} styles")
        self.net = net
        self.index = int(index)
        onehot = torch.zeros(net.num_styles)
        onehot[index] = 1.0
        self.register_buffer("onehot", onehot, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x, self.onehot.expand(x.shape[0], -1))


def check_checkpoint(ckpt: Any, label: str = "<checkpoint>") -> dict[str, Any]:
    """A loaded checkpoint, checked against the format (a bare Johnson ``state_dict`` is wrapped)."""
    if not isinstance(ckpt, dict):
        raise FeedforwardError(f"feed-forward weights {label}: expected a checkpoint dict, got {type(ckpt).__name__}")
    if ckpt.get("format") != FORMAT:
        if "state_dict" not in ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
            return {"format": FORMAT, "version": VERSION, "kind": "johnson", "state_dict": ckpt, "meta": {}}
        raise FeedforwardError(f"feed-forward weights {label}: not an nstray feed-forward checkpoint "
                               f"(format {ckpt.get('format')!r}); train one with `nstray train-style`")
    if int(ckpt.get("version", 0)) > VERSION:
        raise FeedforwardError(f"feed-forward weights {label}: format version {ckpt['version']} is newer than this "
                               f"nstray reads ({VERSION}); upgrade nstray")
    return ckpt


def build_feedforward(ckpt: Mapping[str, Any], label: str = "<checkpoint>") -> nn.Module:
    """The network a checkpoint dict describes, in eval mode on the CPU, frozen."""
    kind = ckpt.get("kind")
    if kind == "johnson":
        try:
            model: nn.Module = johnson_from_checkpoint(ckpt, label)
        except ValueError as exc:
            raise FeedforwardError(str(exc)) from None
    elif kind == "cin":
        from nstray import weights
        from nstray.models.multistyle import multistyle26

        base = ckpt.get("base") or {}
        try:
            path = weights.resolve(str(base["weights"]), sha256=str(base["sha256"]))
        except KeyError:
            raise FeedforwardError(f"{label}: a cin checkpoint needs base.weights and base.sha256") from None
        except weights.WeightsChecksumError as exc:
            raise FeedforwardError(f"{label}: the new style was trained against other base weights than "
                                   f"{base['weights']!r} holds here: {exc}") from None
        except weights.WeightsNotFound as exc:
            raise FeedforwardError(f"{label}: its base network is not available: {exc}") from None
        net = multistyle26(path)
        if "num_styles" in base and int(base["num_styles"]) != net.num_styles:
            raise FeedforwardError(f"{label}: trained against a base with {base['num_styles']} styles, "
                                   f"{base['weights']!r} has {net.num_styles}")
        extended = append_style(net, ckpt["gamma"], ckpt["beta"])
        model = CINStyleNet(extended, net.num_styles)
    else:
        raise FeedforwardError(f"{label}: unknown checkpoint kind {kind!r}; valid: johnson, cin")
    model.requires_grad_(False)
    return model.eval()
