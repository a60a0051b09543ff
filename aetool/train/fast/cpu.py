"""CPU kernels of the `tuned` mode: a GEMM-based forward for transposed convolutions with few
output channels, where oneDNN is slowest."""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

SMALL_OUTPUT_CHANNELS = 4  # transposed convolutions with at most this many outputs get the GEMM


class SmallOutputConvTranspose(torch.autograd.Function):
    """A stride-2, 3x3 transposed convolution with few output channels, for the CPU.

    oneDNN runs such a layer (the decoder's last, 8 -> 1 channels) at a fraction of its speed
    elsewhere, in both directions. Forward here is one GEMM (every input pixel times every
    tap) and nine strided adds; backward uses the two fast oneDNN primitives: a plain strided
    convolution for the input's gradient and the weight-gradient kernel. Same arithmetic as
    `F.conv_transpose2d`, summed in another order.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        padding: tuple[int, int],
        output_padding: tuple[int, int],
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.padding, ctx.output_padding = padding, output_padding
        return conv_transpose_gemm(x, weight, bias, padding, output_padding)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight, None, 2, ctx.padding)
        _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[1]], [2, 2], list(ctx.padding), [1, 1], True,
            list(ctx.output_padding), 1,
            [False, ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]],
        )
        return grad_x, grad_weight, grad_bias, None, None


def conv_transpose_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple[int, int],
    output_padding: tuple[int, int],
) -> torch.Tensor:
    """`F.conv_transpose2d(x, weight, bias, stride=2, padding, output_padding)` for 3x3 kernels,
    as a GEMM and nine strided adds; the result is channels-last."""
    n, c, h, w = x.shape
    out_c = weight.shape[1]
    (ph, pw), (oph, opw) = padding, output_padding
    out_h, out_w = 2 * h + 1 - 2 * ph + oph, 2 * w + 1 - 2 * pw + opw
    taps = x.permute(0, 2, 3, 1).reshape(n * h * w, c) @ weight.reshape(c, out_c * 9)
    taps = taps.view(n, h, w, out_c, 3, 3)
    full = torch.zeros(n, 2 * h + 2, 2 * w + 2, out_c, dtype=x.dtype, device=x.device)
    for ky in range(3):
        for kx in range(3):
            full[:, ky : ky + 2 * h : 2, kx : kx + 2 * w : 2, :] += taps[..., ky, kx]
    out = full[:, ph : ph + out_h, pw : pw + out_w, :]
    out = out + bias if bias is not None else out.contiguous()
    return out.permute(0, 3, 1, 2)


def _fast_conv_transpose_forward(
    module: torch.nn.ConvTranspose2d, x: torch.Tensor, output_size: list[int] | None = None
) -> torch.Tensor:
    # Under autocast (bf16-mixed) the plain layer runs, cast as autocast casts it.
    if (output_size is not None or x.device.type != "cpu" or x.dim() != 4
            or torch.is_autocast_enabled("cpu")):
        return torch.nn.ConvTranspose2d.forward(module, x, output_size)
    return SmallOutputConvTranspose.apply(
        x, module.weight, module.bias, tuple(module.padding), tuple(module.output_padding)
    )


def _small_output_conv_transpose(module: torch.nn.Module) -> bool:
    return (
        type(module) is torch.nn.ConvTranspose2d
        and module.stride == (2, 2)
        and module.kernel_size == (3, 3)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and module.out_channels <= SMALL_OUTPUT_CHANNELS
    )


def use_fast_cpu_layers(model: torch.nn.Module) -> int:
    """Give the model's small-output transposed convolutions the GEMM forward (in place; the
    parameters and state_dict stay as they are). Returns how many layers were changed."""
    changed = 0
    for module in model.modules():
        if _small_output_conv_transpose(module) and "forward" not in vars(module):
            module.forward = functools.partial(_fast_conv_transpose_forward, module)
            changed += 1
    return changed


def use_plain_layers(model: torch.nn.Module) -> None:
    """Undo `use_fast_cpu_layers`."""
    for module in model.modules():
        forward = vars(module).get("forward")
        if isinstance(forward, functools.partial) and forward.func is _fast_conv_transpose_forward:
            del module.forward
