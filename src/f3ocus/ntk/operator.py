r"""Matrix-free layer-kernel products $v_l \mapsto \Theta_l v_l = J_l (J_l^\top v_l)$ for all layers at once.

Nothing of size $NM \times P_l$ is ever formed (in the spirit of curvlinops' operators, Dangel et al.
2024). With $F(\theta) \in \mathbb{R}^{N \times M}$ the kernel outputs of :mod:`f3ocus.ntk.problem`
and one vector $v_l \in \mathbb{R}^{N \times M}$ per layer:

1. $J_l^\top v_l$: one reverse-mode pass (``torch.func.vjp``, linearized once and reused), ``vmap``-ed
   over the layer index, keeping layer $l$'s parameters from the $l$-th result.
2. $J_l u_l$: one forward-mode pass (``torch.func.jvp``) whose tangent is $u_l$ on layer $l$'s
   parameters and zero elsewhere, ``vmap``-ed over layers. Where forward mode is not implemented (fused
   ``scaled_dot_product_attention`` raises ``NotImplementedError``) it is the transpose of step 1,
   the *double-vjp* trick: $J u = \partial_w \langle J^\top w, u \rangle$, a vjp of the (linear) vjp.

Random operations inside the model (ViLT draws its image patches with ``torch.multinomial``) see one
draw for the whole vmapped batch of tangents (``randomness="same"``).

Memory is a few copies of the parameters per layer chunk; work is about three backward passes per
layer per product, so :func:`f3ocus.ntk.linalg.lanczos_max_eig` on top of it is the method of last
resort for models whose Jacobians do not fit in memory.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from f3ocus.ntk.problem import NTKProblem

__all__ = ["LayerKernelOperator"]


class LayerKernelOperator:
    """The batched operator ``V (L, N*M) -> (Θ_1 V_1, ..., Θ_L V_L)`` over ``problem.layers``.

    Args:
        problem: the scoring problem.
        chunk_size: layers per vmapped pass (bounds memory to about ``chunk_size`` parameter copies);
            ``None`` does all layers at once.
        mode: ``"jvp"`` (forward mode for $J u$), ``"vjp"`` (double vjp), or ``"auto"`` (try forward mode,
            switch to the double vjp on ``NotImplementedError`` / ``RuntimeError`` and remember).

    Attributes:
        backward_passes: reverse-mode passes spent so far (each layer of each product counts one,
            the double-vjp counts two).
        matvecs: kernel-vector products applied so far (one per layer per call).
    """

    def __init__(self, problem: NTKProblem, *, chunk_size: int | None = None, mode: str = "auto") -> None:
        self.problem = problem
        self.layers = list(problem.layers)
        self.chunk_size = chunk_size or len(self.layers)
        self.mode = mode
        self.params = problem.layer_params()
        self.backward_passes = 0
        self.matvecs = 0
        self._out, self._vjp_fn = vjp(problem.outputs, self.params)
        self._shape = self._out.shape  # (N, M)

    @property
    def size(self) -> int:
        """``n = N * M``, the side of every layer kernel."""
        return self._shape.numel()

    def __call__(self, v: Tensor) -> Tensor:
        """Apply every layer kernel to its row of ``v`` (shape ``(L, N*M)``)."""
        chunks = []
        for start in range(0, len(self.layers), self.chunk_size):
            names = self.layers[start : start + self.chunk_size]
            chunks.append(self._apply(names, v[start : start + len(names)]))
        self.matvecs += len(self.layers)
        return torch.cat(chunks)

    def total(self, v: Tensor) -> Tensor:
        """Apply the total kernel $\\Theta = \\sum_l \\Theta_l$ to every row of ``v`` (shape ``(B, N*M)``).

        One vjp and one jvp per row for all layers together (the tangent is $J^\\top v$ on every
        scored parameter), whatever the number of layers.
        """
        grads = vmap(self._vjp_fn)(v.reshape(v.shape[0], *self._shape))[0]
        self.backward_passes += v.shape[0]
        return self._jvp(grads).reshape(v.shape[0], -1)

    def _apply(self, layers: list[str], v: Tensor) -> Tensor:
        w = v.reshape(len(layers), *self._shape)
        grads = vmap(self._vjp_fn)(w)[0]  # name -> (L_chunk, *shape), all parameters
        tangents = {}
        for name, p in self.params.items():
            t = p.new_zeros(len(layers), *p.shape)
            for i, layer in enumerate(layers):
                if name in self.problem.layers[layer]:
                    t[i] = grads[name][i]
            tangents[name] = t
        self.backward_passes += len(layers)
        return self._jvp(tangents).reshape(len(layers), -1)

    def _jvp(self, tangents: dict[str, Tensor]) -> Tensor:
        """``J u`` for a batch of tangents ``u`` (name -> (B, *shape)), as ``(B, N, M)``."""
        if self.mode in ("auto", "jvp"):
            try:
                return vmap(self._forward_mode, randomness="same")(tangents)
            except (NotImplementedError, RuntimeError):
                if self.mode == "jvp":
                    raise
                self.mode = "vjp"
        self.backward_passes += 2 * next(iter(tangents.values())).shape[0]
        # Fused attention kernels have neither forward-mode nor double-backward formulas: the double vjp
        # runs with the composite ("math") scaled-dot-product attention, which has both.
        with sdpa_kernel([SDPBackend.MATH]):
            return vmap(self._double_vjp, randomness="same")(tangents)

    def _forward_mode(self, tangent: dict[str, Tensor]) -> Tensor:
        return jvp(self.problem.outputs, (self.params,), (tangent,))[1]

    def _double_vjp(self, tangent: dict[str, Tensor]) -> Tensor:
        def transpose(w: Tensor) -> dict[str, Tensor]:
            return vjp(self.problem.outputs, self.params)[1](w)[0]

        zero = torch.zeros(self._shape, dtype=self._out.dtype, device=self._out.device)
        return vjp(transpose, zero)[1](tangent)[0]
