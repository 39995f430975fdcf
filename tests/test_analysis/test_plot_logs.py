"""plot_logs.py on the logs of a real (tiny) mmengine run, logged through the visualizer config we propose for the
classification configs (LocalVisBackend always, TensorboardVisBackend when tensorboard is installed)."""
import glob
import importlib.util
import json
import os.path as osp

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.registry import METRICS
from mmengine.runner import Runner
from PIL import Image
from torch.utils.data import Dataset

HAS_TB = importlib.util.find_spec('tensorboard') is not None
# the proposed config lines (see docs/complexity.md / the report): Local always, TensorBoard when installed
VIS_BACKENDS = [dict(type='LocalVisBackend')] + ([dict(type='TensorboardVisBackend')] if HAS_TB else [])


class Net(BaseModel):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        logits = self.fc(inputs)
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, data_samples))
        if mode == 'predict':
            return [dict(pred=int(p), gt=int(g)) for p, g in zip(logits.argmax(1), data_samples)]
        return logits


class Data(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(24, 6, generator=g)
        self.y = self.x[:, :3].argmax(1)

    def __len__(self):
        return 24

    def __getitem__(self, i):
        return dict(inputs=self.x[i], data_samples=self.y[i])


@METRICS.register_module(force=True)
class PlotLogsToyAccuracy(BaseMetric):
    def process(self, data_batch, data_samples):
        self.results.extend(int(s['pred'] == s['gt']) for s in data_samples)

    def compute_metrics(self, results):
        return {'accuracy/top1': 100.0 * sum(results) / len(results)}


def tiny_run(work_dir):
    loader = dict(dataset=Data(), sampler=dict(type='DefaultSampler', shuffle=False),
                  collate_fn=dict(type='default_collate'), batch_size=6, num_workers=0)
    runner = Runner(model=Net(), work_dir=str(work_dir), train_dataloader=loader, val_dataloader=loader,
                    val_evaluator=dict(type='PlotLogsToyAccuracy'), val_cfg=dict(),
                    optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.5)),
                    train_cfg=dict(by_epoch=True, max_epochs=3, val_interval=1),
                    default_hooks=dict(logger=dict(type='LoggerHook', interval=1)),
                    visualizer=dict(type='Visualizer', vis_backends=VIS_BACKENDS, name='plot_logs_test'),
                    default_scope='mmengine', randomness=dict(seed=0))
    runner.train()


def test_plot_logs_on_a_real_run(tmp_path, load_tool):
    work_dir = tmp_path / 'run'
    tiny_run(work_dir)
    if HAS_TB:
        assert glob.glob(osp.join(str(work_dir), '**', 'events.out.tfevents.*'), recursive=True)
    tool = load_tool('plot_logs')
    train, val = tool.load_scalars(str(work_dir))
    assert 'loss' in train and 'lr' in train and len(train['loss']) == 12  # 4 iters x 3 epochs, interval 1
    assert [x for x, _ in val['accuracy/top1']] == [1.0, 2.0, 3.0]
    out = tmp_path / 'plots'
    assert tool.main([str(work_dir), '--out-dir', str(out)]) == 0
    for name in ('loss.png', 'lr.png', 'val_metrics.png'):
        with Image.open(out / name) as img:
            assert min(img.size) > 100
    dump = json.loads((out / 'scalars.json').read_text())
    assert dump['run']['train']['loss'][0][1] == pytest.approx(train['loss'][0][1])


def test_plot_logs_errors(tmp_path, load_tool):
    tool = load_tool('plot_logs')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        tool.main([str(tmp_path / 'missing')])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='LocalVisBackend'):
        tool.main([str(tmp_path / 'empty')])


PROPOSED_LINES = """
import importlib.util
vis_backends = [dict(type='LocalVisBackend')] + (
    [dict(type='TensorboardVisBackend')] if importlib.util.find_spec('tensorboard') else [])
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
"""


def test_proposed_visualizer_lines_parse(tmp_path):
    """The lines proposed for the classification configs load as a plain mmengine config."""
    from mmengine.config import Config
    path = tmp_path / 'vis_cfg.py'
    path.write_text("_base_ = []\n" + PROPOSED_LINES)
    cfg = Config.fromfile(str(path))
    assert [b['type'] for b in cfg.visualizer.vis_backends] == [b['type'] for b in VIS_BACKENDS]
    assert 'importlib' not in cfg
