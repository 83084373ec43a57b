"""Networks: the actor MLP, the critic ensemble (twin critics in one batched matmul), inits.

The critics of TD3 run as one :class:`EnsembleMLP`: each layer holds the weights of all
members as ``[E, in, out]`` and runs them with one ``torch.baddbmm``, which on a CPU costs
little more than a single critic.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from rlfw.core import LinearFactory
from rlfw.registry import Registry, register, registry

ACTIVATIONS: Registry[type[nn.Module]] = registry("algo.activation")
register("algo.activation", "relu", None, nn.ReLU)
register("algo.activation", "leaky_relu", None, nn.LeakyReLU)
register("algo.activation", "tanh", None, nn.Tanh)
register("algo.activation", "elu", None, nn.ELU)
register("algo.activation", "gelu", None, nn.GELU)
register("algo.activation", "silu", None, nn.SiLU)


def _default(w: torch.Tensor, b: torch.Tensor, last: bool) -> None:
    """PyTorch's nn.Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / math.sqrt(w.shape[1])
    nn.init.uniform_(w, -bound, bound)
    nn.init.uniform_(b, -bound, bound)


def _he_normal(w: torch.Tensor, b: torch.Tensor, last: bool) -> None:
    """He et al. 2015: N(0, 2 / fan_in); biases 0."""
    nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(b)


def _orthogonal(w: torch.Tensor, b: torch.Tensor, last: bool) -> None:
    """Saxe et al. 2014: orthogonal with gain sqrt(2) (1 for the output layer); biases 0."""
    nn.init.orthogonal_(w, gain=1.0 if last else math.sqrt(2.0))
    nn.init.zeros_(b)


def _xavier_uniform(w: torch.Tensor, b: torch.Tensor, last: bool) -> None:
    """Glorot & Bengio 2010: U(+-sqrt(6 / (fan_in + fan_out))); biases 0."""
    nn.init.xavier_uniform_(w)
    nn.init.zeros_(b)


InitFn = Callable[[torch.Tensor, torch.Tensor, bool], None]
INITS: Registry[InitFn] = registry("algo.init")
register("algo.init", "default", None, _default)
register("algo.init", "he_normal", None, _he_normal)
register("algo.init", "orthogonal", None, _orthogonal)
register("algo.init", "xavier_uniform", None, _xavier_uniform)


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied in one batched matmul.

    Args:
        ensemble: E.
        in_features, out_features: sizes of each member.

    Shapes: input ``[E, B, in]`` -> output ``[E, B, out]``. ``weight`` is ``[E, in, out]``,
    ``bias`` ``[E, 1, out]``.
    """

    def __init__(self, ensemble: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_features))

    def reset_parameters(self, init: InitFn, last: bool) -> None:
        """Initialise each member as an nn.Linear of the same size would be with ``init``."""
        with torch.no_grad():
            for e in range(self.weight.shape[0]):
                w = torch.empty(self.weight.shape[2], self.weight.shape[1])  # [out, in]
                b = torch.empty(self.weight.shape[2])
                init(w, b, last)
                self.weight[e].copy_(w.t())
                self.bias[e, 0].copy_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """``E`` MLPs (the critics), evaluated together.

    Args:
        ensemble: E (1 for DDPG, 2 for TD3 and SAC, ``n_critics`` for TQC).
        in_features: input size (normalised observation, goal and action).
        hidden: hidden layer sizes.
        activation: a name in :data:`ACTIVATIONS`.
        init: a name in :data:`INITS`.
        out_features: outputs per member (1: a scalar Q value; TQC: ``n_quantiles``).

    Shapes: ``forward(x [B, in]) -> [E, B]`` for ``out_features=1``, else ``[E, B, out]``.
    """

    def __init__(
        self,
        ensemble: int,
        in_features: int,
        hidden: Sequence[int],
        activation: str = "relu",
        init: str = "default",
        out_features: int = 1,
    ) -> None:
        super().__init__()
        self.out_features = out_features
        sizes = [in_features, *hidden, out_features]
        self.layers: list[EnsembleLinear] = nn.ModuleList(  # type: ignore[assignment]
            EnsembleLinear(ensemble, a, b) for a, b in itertools.pairwise(sizes)
        )
        self.act: nn.Module = ACTIVATIONS.get(activation).target()
        init_fn = INITS.get(init).target
        for i, layer in enumerate(self.layers):
            layer.reset_parameters(init_fn, last=i == len(self.layers) - 1)
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(0).expand(self.ensemble, *x.shape)
        for layer in self.layers[:-1]:
            h = self.act(layer(h))
        out = self.layers[-1](h)
        return out.squeeze(-1) if self.out_features == 1 else out

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """Member 0 alone (the actor's objective uses Q_1): ``[B, in] -> [B]``."""
        h = x
        for layer in self.layers[:-1]:
            h = self.act(torch.addmm(layer.bias[0], h, layer.weight[0]))
        last = self.layers[-1]
        out = torch.addmm(last.bias[0], h, last.weight[0])
        return out.squeeze(-1) if self.out_features == 1 else out


class MLP(nn.Module):
    """An MLP with an optional output activation (the actor: tanh into [-1, 1]).

    Args:
        in_features, out_features: sizes.
        hidden: hidden layer sizes.
        activation: a name in :data:`ACTIVATIONS`.
        init: a name in :data:`INITS` (applied to nn.Linear layers; NoisyLinear layers keep
            their own initialisation).
        output_activation: module applied to the output, or None.
        linear: factory ``(in, out) -> module`` for the layers (nn.Linear, or a noisy linear).
        norm: factory ``features -> module`` of a normalisation layer placed on the input and
            after every hidden activation (CrossQ's batch renormalisation), or None.

    Shapes: ``[B, in] -> [B, out]``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int],
        activation: str = "relu",
        init: str = "default",
        output_activation: nn.Module | None = None,
        linear: LinearFactory = nn.Linear,
        norm: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        act_cls = ACTIVATIONS.get(activation).target
        init_fn = INITS.get(init).target
        layers: list[nn.Module] = [] if norm is None else [norm(in_features)]
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            lin = linear(a, b)
            last = i == len(sizes) - 2
            if isinstance(lin, nn.Linear):
                with torch.no_grad():
                    init_fn(lin.weight, lin.bias, last)
            layers.append(lin)
            if not last:
                layers.append(act_cls())
                if norm is not None:
                    layers.append(norm(b))
        self.net = nn.Sequential(*layers)
        self.output_activation = output_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out if self.output_activation is None else self.output_activation(out)

    def forward_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pre-activation u [B, out], output [B, out])``; the output is ``u`` without an
        output activation (for the actor: ``u`` before the tanh, and ``tanh(u)``)."""
        u = self.net(x)
        return u, (u if self.output_activation is None else self.output_activation(u))
