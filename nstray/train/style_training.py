"""Training feed-forward styles, the pure tensor part: perceptual loss, the trainable networks, one step.

- :class:`PerceptualLoss` (Johnson et al. 2016): a frozen VGG encoder; content loss against the
  input's own features, style loss against the style image's Gram matrices (computed once, kept as
  buffers), total variation on the output. Each term is returned already weighted.
- Johnson mode trains a whole :class:`~nstray.models.johnson.JohnsonNet`.
- CIN mode (Dumoulin et al. 2017) trains :class:`NewStyleCIN`: the pretrained multi-style network
  with every convolution and all ``S`` style tables frozen, and one new γ/β vector per conditional
  instance norm as the only parameters. Its forward is the multi-style network's maths for one style,
  written with differentiable ops (the inference network works in place and is not differentiable);
  appending the trained vectors to the base tables (:func:`nstray.stylize.feedforward.append_style`)
  gives the same function at index ``S``.
- :func:`train_step` is one optimizer step; :func:`fit_crop` turns a decoded image into a training crop.

Nothing here knows Ray, storage or processes; :mod:`nstray.train.ray_trainer` wires it up.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nstray.models.multistyle import ConditionalInstanceNorm2d, MultiStyleNet
from nstray.models.vgg import VGGEncoder
from nstray.stylize.losses import ContentLoss, StyleLoss, TotalVariationLoss

__all__ = [
    "DEFAULT_CONTENT_LAYERS",
    "DEFAULT_STYLE_LAYERS",
    "LOSS_TERMS",
    "PerceptualLoss",
    "NewStyleCIN",
    "train_step",
    "fit_crop",
    "trainable_state",
    "load_trainable_state",
]

# Johnson et al. 2016 (VGG-16): content at relu2_2, style at relu1_2, relu2_2, relu3_3, relu4_3.
DEFAULT_CONTENT_LAYERS: dict[str, float] = {"relu2_2": 1.0}
DEFAULT_STYLE_LAYERS: dict[str, float] = {"relu1_2": 1.0, "relu2_2": 1.0, "relu3_3": 1.0, "relu4_3": 1.0}
LOSS_TERMS = ("content", "style", "tv", "total")


class PerceptualLoss(nn.Module):
    """``forward(output, content) -> {content, style, tv, total}`` (weighted terms, scalars).

    ``encoder`` must return every layer of ``content_layers`` and ``style_layers``. ``style_image``
    is ``[3, H, W]`` or ``[1, 3, H, W]`` in [0, 1]; its Gram matrices are the style targets.
    """

    def __init__(
        self,
        encoder: VGGEncoder,
        style_image: Tensor,
        *,
        content_layers: Mapping[str, float] = DEFAULT_CONTENT_LAYERS,
        style_layers: Mapping[str, float] = DEFAULT_STYLE_LAYERS,
        content_weight: float = 1.0,
        style_weight: float = 1e5,
        tv_weight: float = 1.0,
    ) -> None:
        super().__init__()
        missing = [n for n in [*content_layers, *style_layers] if n not in encoder.layers]
        if missing:
            raise ValueError(f"the encoder does not return layer(s) {missing}; it returns {list(encoder.layers)}")
        self.encoder = encoder
        self.content_loss = ContentLoss(content_layers)
        self.style_loss = StyleLoss(style_layers)
        self.tv_loss = TotalVariationLoss(p=2)
        self.weights = {"content": float(content_weight), "style": float(style_weight), "tv": float(tv_weight)}
        style = style_image if style_image.dim() == 4 else style_image[None]
        with torch.no_grad():
            grams = self.style_loss.targets(encoder(style.float()))
        self._gram_names = {layer: f"gram_{layer}" for layer in grams}
        for layer, g in grams.items():
            self.register_buffer(self._gram_names[layer], g)

    def style_targets(self) -> dict[str, Tensor]:
        """The style image's Gram matrices per layer (``[1, C, C]``)."""
        return {layer: getattr(self, name) for layer, name in self._gram_names.items()}

    def forward(self, output: Tensor, content: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            targets = self.encoder(content)
        features = self.encoder(output)
        w = self.weights
        zero = output.new_zeros(())
        terms = {
            "content": w["content"] * self.content_loss(features, targets) if w["content"] else zero,
            "style": w["style"] * self.style_loss(features, self.style_targets()) if w["style"] else zero,
            "tv": w["tv"] * self.tv_loss(output) if w["tv"] else zero,
        }
        terms["total"] = terms["content"] + terms["style"] + terms["tv"]
        return terms


class NewStyleCIN(nn.Module):
    """The multi-style network restricted to one *new* style whose γ/β are the only trainable parameters.

    ``base`` (e.g. ``multistyle26()``) is kept frozen; ``gamma[i]`` / ``beta[i]`` (``[C_i]``) belong to
    the i-th conditional instance norm (:attr:`norm_names`). ``init``: ``None`` starts from the mean of
    the base's styles, an int from that style's row.
    """

    def __init__(self, base: MultiStyleNet, init: int | None = None) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.norm_names: list[str] = [n for n, m in base.named_modules() if isinstance(m, ConditionalInstanceNorm2d)]
        norms = dict(base.named_modules())
        if init is not None and not 0 <= init < base.num_styles:
            raise ValueError(f"init style {init} is out of range; valid: 0 to {base.num_styles - 1}")

        def row(table: Tensor) -> Tensor:
            return table.detach().mean(0) if init is None else table.detach()[init]

        self.gamma = nn.ParameterList([nn.Parameter(row(norms[n].gamma).clone()) for n in self.norm_names])
        self.beta = nn.ParameterList([nn.Parameter(row(norms[n].beta).clone()) for n in self.norm_names])
        self._index = {id(norms[n]): i for i, n in enumerate(self.norm_names)}

    def tables(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The new style's ``(gamma, beta)``: ``{norm layer name: [C]}`` each (detached)."""
        return ({n: g.detach() for n, g in zip(self.norm_names, self.gamma)},
                {n: b.detach() for n, b in zip(self.norm_names, self.beta)})

    def _block(self, block: nn.Module, x: Tensor) -> Tensor:
        conv, norm = block.conv, block.norm
        k = conv.kernel_size[0] // 2
        y = F.conv2d(F.pad(x, (k, k, k, k), mode="reflect"), conv.weight, stride=conv.stride)
        i = self._index[id(norm)]
        y = F.instance_norm(y, weight=self.gamma[i], bias=self.beta[i], eps=norm.eps)
        return F.relu(y) if block.relu else y

    def forward(self, x: Tensor) -> Tensor:
        """Stylize ``x`` ([B, 3, H, W] in [0, 1]) with the new style; same maths as ``MultiStyleNet`` per image."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be [B, 3, H, W], got {list(x.shape)}")
        h, w = x.shape[-2:]
        net = self.base
        y = x
        for block in net.contract:
            y = self._block(block, y)
        for res in net.res:
            y = y + self._block(res._modules["1"], self._block(res._modules["0"], y))
        y = self._block(net.expand[0], F.interpolate(y, scale_factor=2.0, mode="nearest"))
        y = self._block(net.expand[1], F.interpolate(y, scale_factor=2.0, mode="nearest"))
        y = self._block(net.expand[2], y)
        return torch.sigmoid(y[:, :, :h, :w])


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """The parameters that train (``requires_grad``), by name, cloned to the CPU: what a resume needs."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy :func:`trainable_state` back into ``model``; the names must match exactly."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise ValueError(f"the saved training state does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for n, p in params.items():
            if p.shape != state[n].shape:
                raise ValueError(f"{n}: saved shape {list(state[n].shape)}, model shape {list(p.shape)}")
            p.copy_(state[n])


def train_step(model: nn.Module, loss_fn: PerceptualLoss, optimizer: torch.optim.Optimizer, content: Tensor) -> dict[str, Tensor]:
    """One optimizer step on a batch ``content[B, 3, H, W]``; returns the (detached) weighted loss terms."""
    optimizer.zero_grad(set_to_none=True)
    output = model(content)
    terms = loss_fn(output, content)
    terms["total"].backward()
    optimizer.step()
    return {k: v.detach() for k, v in terms.items()}


def fit_crop(image: np.ndarray, size: int, offset: float = 0.5) -> Tensor:
    """``uint8[H, W, 3]`` → float ``[3, size, size]`` in [0, 1]: shorter side resized to ``size`` (antialiased),
    then a square crop along the longer side at ``offset`` (0 = start, 0.5 = centre, 1 = end)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got {list(image.shape)}")
    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = torch.tensor(image).permute(2, 0, 1)[None].float().div_(255.0)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)
    y0 = round((nh - size) * min(max(offset, 0.0), 1.0))
    x0 = round((nw - size) * min(max(offset, 0.0), 1.0))
    return x[0, :, y0 : y0 + size, x0 : x0 + size].contiguous()
