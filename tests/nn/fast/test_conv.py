"""ConvSpec's CPU rewrites (even phase, flipped forward) against autograd's conv2d."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pcdarts.nn.fast.conv import ConvSpec

CL = torch.channels_last

# (in channels, multiplier, kernel, stride, dilation): the depthwise convs of the DARTS
# spaces (sep/dil 3x3 and 5x5, stride 1 and 2, replicated or channel-multiplier form),
# a dense conv with stride == dilation, and 1x1
CASES = [(6, 1, 3, 1, 1), (6, 1, 5, 1, 1), (6, 1, 3, 1, 2), (6, 1, 5, 1, 2), (6, 1, 3, 2, 1), (6, 1, 5, 2, 1),
         (6, 1, 3, 2, 2), (6, 1, 5, 2, 2), (3, 2, 3, 1, 2), (3, 2, 5, 2, 2), (3, 2, 5, 1, 1), (6, 1, 1, 1, 1)]


def _rewrite(spec: ConvSpec, w: torch.Tensor, x_shape: torch.Size, device: torch.device) -> str:
    if spec._even_phase(x_shape, device):
        return "even phase"
    return "flipped forward" if spec._flip_input_grad(w, torch.empty(0, device=device)) else "none"


@pytest.mark.parametrize("cin,mult,k,s,d", CASES)
def test_conv_spec_equals_autograd(cin: int, mult: int, k: int, s: int, d: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, cin, 12, 12).to(memory_format=CL)
    w = torch.randn(cin * mult, 1, k, k)
    spec = ConvSpec((s, s), (d * (k - 1) // 2,) * 2, (d, d), cin)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y_ref = F.conv2d(xr, wr, None, spec.stride, spec.padding, spec.dilation, cin)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y = spec(x, w)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    gi, gw = spec.backward(g, x, x.shape, w, True, True)
    torch.testing.assert_close(gi, xr.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gw, wr.grad, rtol=1e-5, atol=1e-4)
    # one gradient at a time (the architecture step asks for the input gradient only)
    gi_only, none = spec.backward(g, None, x.shape, w, True, False)
    assert none is None
    torch.testing.assert_close(gi_only, xr.grad, rtol=1e-5, atol=1e-4)
    none, gw_only = spec.backward(g, x, x.shape, w, False, True)
    assert none is None
    torch.testing.assert_close(gw_only, wr.grad, rtol=1e-5, atol=1e-4)
    assert gi.is_contiguous(memory_format=CL)


def test_rewrites_apply_where_documented() -> None:
    cpu = torch.device("cpu")
    shape = torch.Size([2, 4, 8, 8])
    dw3 = torch.empty(4, 1, 3, 3)
    assert _rewrite(ConvSpec((2, 2), (2, 2), (2, 2), 4), dw3, shape, cpu) == "even phase"  # dil_conv_3x3, reduce
    assert _rewrite(ConvSpec((1, 1), (2, 2), (2, 2), 4), dw3, shape, cpu) == "flipped forward"  # dil_conv_3x3
    assert _rewrite(ConvSpec((2, 2), (1, 1), (1, 1), 4), dw3, shape, cpu) == "none"  # sep_conv_3x3, reduce
    assert _rewrite(ConvSpec((1, 1), (0, 0), (1, 1), 1), torch.empty(4, 4, 1, 1), shape, cpu) == "none"  # 1x1
    # odd input: the phase would not cover the output
    assert _rewrite(ConvSpec((2, 2), (2, 2), (2, 2), 4), dw3, torch.Size([2, 4, 7, 7]), cpu) == "none"
    # channel multiplier (2 outputs per input channel): its forward is not faster, no rewrite
    assert _rewrite(ConvSpec((1, 1), (2, 2), (2, 2), 2), dw3, shape, cpu) == "none"


def test_odd_input_with_stride_equal_dilation_is_left_to_aten() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9).to(memory_format=CL)
    w = torch.randn(3, 1, 3, 3)
    spec = ConvSpec((2, 2), (2, 2), (2, 2), 3)
    xr = x.clone().requires_grad_()
    y_ref = F.conv2d(xr, w, None, 2, 2, 2, 3)
    y_ref.backward(torch.ones_like(y_ref))
    torch.testing.assert_close(spec(x, w), y_ref)
    torch.testing.assert_close(spec.backward(torch.ones_like(y_ref), x, x.shape, w, True, False)[0], xr.grad)



def test_rewrites_switch_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from pcdarts.nn.fast import conv
    monkeypatch.setattr(conv, "REWRITES", {"even_phase": False, "flipped_forward": False})
    cpu, shape, dw3 = torch.device("cpu"), torch.Size([2, 4, 8, 8]), torch.empty(4, 1, 3, 3)
    assert _rewrite(ConvSpec((2, 2), (2, 2), (2, 2), 4), dw3, shape, cpu) == "none"
    assert _rewrite(ConvSpec((1, 1), (2, 2), (2, 2), 4), dw3, shape, cpu) == "none"
