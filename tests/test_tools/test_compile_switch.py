"""mmengine's ``compile`` switch (``torch.compile`` of the model's ``train_step``) with PeLK, through tools/train.py.

``compile=True`` (torch.compile's defaults) or a dict of ``torch.compile`` arguments at the top level of a config
(or ``--cfg-options compile=True`` / ``compile.backend=aot_eager``). The run here uses a backend that records what
each graph dynamo captures holds and runs it as captured (dynamo's capture only: no AOTAutograd, no code
generation, to keep the test fast): the model's forward and loss must be ONE graph holding every trainable
parameter. A graph break inside the
model (the forward runs in the optimizer wrapper's context manager, which dynamo cannot split) makes dynamo give up
on the whole ``train_step`` and compile the model's pieces one by one. A bad ``compile`` value is one line before
anything is built.
"""
import json
import math
import re

import pytest
import torch

from pelk_mm.apis.check_settings import check_settings
from pelk_mm.config import load_config
from pelk_mm.errors import ConfigValidationError

# Runs ``python TOOL ARGS`` with a torch.compile backend 'pelk_record' registered: per captured graph it records the
# trainable-parameter inputs and whether the graph computes a cross-entropy (to $RECORD, JSON), then runs the graph.
RECORDING_RUN = '''
import json, os, runpy, sys
import torch
from torch._dynamo.backends.registry import register_backend
graphs = []

@register_backend(name='pelk_record')
def pelk_record(gm, example_inputs):
    params = [t for t in example_inputs if isinstance(t, torch.nn.Parameter) and t.requires_grad]
    targets = [str(n.target) for n in gm.graph.nodes if n.op in ('call_function', 'call_method')]
    graphs.append(dict(params=len(params), numel=sum(p.numel() for p in params),
                       cross_entropy=any('cross_entropy' in t for t in targets)))
    return gm.forward

sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
finally:
    with open(os.environ['RECORD'], 'w') as f:
        json.dump(graphs, f)
'''


def test_train_with_compile_captures_the_model_whole(tools, tmp_path):
    """One epoch of the tiny classifier (``conv_impl='dense'``, 3 iterations) with ``compile.backend`` set from the
    command line: mmengine compiles, the losses are finite, and one captured graph holds the forward and loss with
    every parameter the optimizer trains (counted from the run's own checkpoint)."""
    script, record, work = tmp_path / 'recording_run.py', tmp_path / 'graphs.json', tmp_path / 'work'
    script.write_text(RECORDING_RUN)
    proc = tools.run([tools.PY, script, tools.REPO / 'tools' / 'train.py', tools.TINY_CLS, '--work-dir', work,
                      '--no-validate', '--cfg-options', 'compile.backend=pelk_record', 'train_cfg.max_epochs=1',
                      'train_dataloader.batch_size=96'],
                     cwd=tmp_path, timeout=300, RECORD=str(record))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = '\n'.join(p.read_text() for p in work.glob('*/*.log'))
    assert 'Model has been "compiled"' in log

    losses = [float(v) for v in re.findall(r'\bloss: (\S+)', log)]
    assert losses and all(math.isfinite(v) for v in losses), losses

    ckpt = torch.load(work / 'epoch_1.pth', map_location='cpu')
    state = ckpt['optimizer']['state'].values()
    trained = dict(params=len(state), numel=sum(s['exp_avg'].numel() for s in state))
    assert trained['params'] > 20  # backbone and head
    assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values() if v.is_floating_point())

    graphs = json.loads(record.read_text())
    whole = [g for g in graphs if g['cross_entropy'] and g['params'] == trained['params']
             and g['numel'] == trained['numel']]
    assert whole, (f'no captured graph holds the forward and loss with all {trained} trainable parameters; '
                   f'graphs: {graphs}')


@pytest.fixture(scope='module')
def tiny_cfg(tools):
    return load_config(str(tools.TINY_CLS))


@pytest.mark.parametrize('value', [True, False, None, dict(backend='aot_eager'),
                                   dict(backend='inductor', mode='max-autotune', fullgraph=True)])
def test_compile_values_mmengine_takes_pass_the_check(tiny_cfg, value):
    cfg = tiny_cfg.copy()
    cfg.compile = value
    assert check_settings(cfg, 'train') == []


@pytest.mark.parametrize('value, key, says', [
    ('yes', 'compile', "got 'yes'"),
    (dict(backnd='aot_eager'), 'compile.backnd', "did you mean 'backend'"),
    (dict(backend='inductr'), 'compile.backend', "did you mean 'inductor'"),
    (dict(mode='max_autotune'), 'compile.mode', "did you mean 'max-autotune'"),
])
def test_bad_compile_values_are_one_line(tiny_cfg, value, key, says):
    """What mmengine would fail on only once the Runner is built and training starts (an AssertionError for a
    non-dict, a TypeError or torch's own error for a misspelt argument, backend or mode) is refused up front."""
    cfg = tiny_cfg.copy()
    cfg.compile = value
    with pytest.raises(ConfigValidationError) as err:
        check_settings(cfg, 'train')
    msg = str(err.value)
    assert f'config key `{key}`' in msg and says in msg and 'Fix:' in msg and '\n' not in msg
