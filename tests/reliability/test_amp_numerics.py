"""Mixed precision of the PeLK op and backbone against float32.

CPU autocast here runs bf16 (and fp16 where torch's CPU autocast supports the conv); the tolerances are relative
L2 errors, stated below: bf16 keeps 8 mantissa bits (unit round-off 2^-8 = 3.9e-3), fp16 keeps 11 (4.9e-4); errors
accumulate over the depthwise K x K sums and the blocks, so we allow ~8x the unit round-off for one layer and
~16x for a whole (tiny) backbone. On a CUDA machine the same tests run fp16 and bf16 on the GPU."""
import pytest
import torch

from pelk_mm.models.backbones.pelk import PeLK
from pelk_mm.models.layers.peripheral_conv import PeripheralConv2d

TOL_LAYER = {torch.bfloat16: 3e-2, torch.float16: 4e-3}
TOL_BACKBONE = {torch.bfloat16: 6e-2, torch.float16: 8e-3}
DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _cpu_fp16_autocast_conv_supported():
    try:
        with torch.autocast('cpu', dtype=torch.float16):
            y = torch.nn.functional.conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3), groups=2)
        return y.dtype == torch.float16
    except Exception:  # noqa: BLE001
        return False


def _dtypes(device):
    out = [torch.bfloat16]
    if device == 'cuda' or _cpu_fp16_autocast_conv_supported():
        out.append(torch.float16)
    return out


CASES = [(d, t) for d in DEVICES for t in _dtypes(d)]


@pytest.mark.parametrize('device,dtype', CASES, ids=[f'{d}-{str(t)[6:]}' for d, t in CASES])
def test_peripheral_conv_autocast_matches_fp32(device, dtype):
    torch.manual_seed(0)
    conv = PeripheralConv2d(16, 13, center_size=3, small_kernel=3, kpe_mode=None).to(device).eval()
    with torch.no_grad():
        for p in conv.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, 16, 24, 24, device=device)
    with torch.no_grad():
        ref = conv(x)
        with torch.autocast(device, dtype=dtype):
            out = conv(x)
    assert out.dtype in (dtype, torch.float32)
    assert torch.isfinite(out).all()
    err = _rel(out, ref)
    assert err < TOL_LAYER[dtype], f'{device} {dtype}: relative error {err:.2e} >= {TOL_LAYER[dtype]}'
    assert err > 0 or out.dtype == torch.float32  # autocast really changed the computation


@pytest.mark.parametrize('device,dtype', CASES, ids=[f'{d}-{str(t)[6:]}' for d, t in CASES])
def test_pelk_backbone_autocast_matches_fp32(device, dtype):
    torch.manual_seed(0)
    model = PeLK(arch=dict(depths=[1, 1, 2, 1], channels=[16, 24, 32, 48], kernel_sizes=[13, 11, 7, 5],
                           center_sizes=[3, 3, 3, 3]), small_kernel=3, out_indices=[0, 1, 2, 3],
                 gap_before_final_norm=False, layer_scale_init_value=1.0)
    model.init_weights()
    model = model.to(device).eval()
    x = torch.randn(2, 3, 64, 64, device=device)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast(device, dtype=dtype):
            out = model(x)
    for i, (o, r) in enumerate(zip(out, ref)):
        assert torch.isfinite(o).all()
        err = _rel(o, r)
        assert err < TOL_BACKBONE[dtype], f'{device} {dtype} output {i}: relative error {err:.2e}'


def test_backbone_bf16_backward_finite_and_close():
    """One training step's gradients under CPU bf16 autocast agree in direction with fp32 (cosine > 0.99)."""
    torch.manual_seed(0)
    model = PeLK(arch=dict(depths=[1, 1, 1, 1], channels=[8, 16, 16, 32], kernel_sizes=[7, 5, 5, 3],
                           center_sizes=[3, 3, 3, 3]), small_kernel=3, layer_scale_init_value=1.0)
    model.init_weights()
    x = torch.randn(4, 3, 32, 32)

    def grads(autocast):
        model.zero_grad()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            loss = model(x)[-1].float().pow(2).mean()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    g32, g16 = grads(False), grads(True)
    assert torch.isfinite(g16).all()
    cos = torch.nn.functional.cosine_similarity(g32, g16, dim=0)
    assert cos > 0.99, f'cosine(grad fp32, grad bf16) = {cos:.4f}'
