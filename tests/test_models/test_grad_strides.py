"""PeLK's parameter gradients keep the parameters' strides, so DDP uses them without its layout warning."""
import copy
import subprocess
import sys
import textwrap

import torch

from pelk_mm.models import PeLK

ARCH = dict(depths=[1, 1, 1, 1], channels=[16, 24, 32, 48], kernel_sizes=[9, 7, 5, 5], center_sizes=[3, 3, 3, 3])


def _grads(model):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    sum(out.sum() for out in model(x)).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_grads_have_the_parameters_strides():
    torch.manual_seed(0)
    model = PeLK(arch=ARCH, small_kernel=5, drop_path_rate=0.0)
    bare = copy.deepcopy(model)  # deepcopy leaves tensor hooks behind: autograd's own layout
    grads, bare_grads = _grads(model), _grads(bare)
    params = dict(model.named_parameters())
    # the case exists: a depthwise weight (C, 1, k, k) that autograd leaves in channels-last strides
    assert any(g.stride() != params[n].stride() for n, g in bare_grads.items()), 'no channels-last gradient left'
    wrong = {n: (params[n].stride(), g.stride()) for n, g in grads.items() if g.stride() != params[n].stride()}
    assert not wrong, wrong
    for name, grad in grads.items():
        assert torch.equal(grad, bare_grads[name]), name


DDP_SCRIPT = textwrap.dedent('''
    import os, sys, warnings
    import torch, torch.distributed as dist
    from pelk_mm.models import PeLK
    store = dist.FileStore(sys.argv[1], 1)
    dist.init_process_group('gloo', store=store, rank=0, world_size=1)
    arch = dict(depths=[1, 1, 1, 1], channels=[16, 24, 32, 48], kernel_sizes=[9, 7, 5, 5], center_sizes=[3, 3, 3, 3])
    model = torch.nn.parallel.DistributedDataParallel(PeLK(arch=arch, small_kernel=5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        sum(o.sum() for o in model(torch.randn(2, 3, 64, 64))).backward()
    print('WARNINGS:', [str(w.message).splitlines()[0] for w in caught])
    dist.destroy_process_group()
''')


def test_ddp_gives_no_grad_stride_warning(tmp_path):
    r = subprocess.run([sys.executable, '-c', DDP_SCRIPT, str(tmp_path / 'store')], capture_output=True, text=True,
                       timeout=120, env={**__import__('os').environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'WARNINGS:' in r.stdout
    assert 'Grad strides do not match' not in r.stdout + r.stderr, r.stdout + r.stderr[-2000:]
