"""Parity on the real pipelines: a short demo training per task (tools/train.py's entry point, in-process), then
``tools/deploy/export_onnx.py CONFIG CKPT OUT --val``: the task graph in onnxruntime and the train-form model in
PyTorch scored on the demo validation set by the codebase's own evaluator (mmpretrain Accuracy, mmseg IoUMetric,
mmdet CocoMetric): top-1 identical, mIoU within 0.1, COCO bbox / segm mAP within 0.002 (0.2 AP points), and the
trained metric above what a constant or untrained model scores."""
import importlib.util
import os.path as osp
import re

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

#: one run per task: config, training options (shortened schedule, no validation during training), checkpoint,
#: export options
TASKS = {
    'classifier': ('configs/demo/pelk_demo_in1k.py',
                   ['train_cfg.max_epochs=8', 'param_scheduler.1.end=8', 'default_hooks.checkpoint.interval=8'],
                   'epoch_8.pth', ['--shape', '64', '64']),
    'segmentor': ('configs/demo/pelk_demo_upernet_ade20k.py',
                  ['train_cfg.max_iters=60', 'param_scheduler.1.end=60', 'default_hooks.checkpoint.interval=60'],
                  'iter_60.pth', []),
    'detector': ('configs/demo/pelk_demo_cascade_mask_rcnn_coco.py',
                 ['train_cfg.max_epochs=4', 'param_scheduler.1.milestones=[3]', 'default_hooks.checkpoint.interval=4'],
                 'epoch_4.pth', ['--shape', '160', '160']),
}
#: bound of |onnxruntime - PyTorch| per metric, and the trained PyTorch metric must exceed the floor (6-class
#: chance 16.7 %; the constant-prediction mIoU of the demo ADE set is ~12; an untrained detector scores ~0)
BOUNDS = {'accuracy/top1': (0.0, 25.0), 'mIoU': (0.1, 30.0), 'coco/bbox_mAP': (0.002, 0.05),
          'coco/segm_mAP': (0.002, 0.05)}
QUIET = ['train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
         'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False']


def _tool():
    spec = importlib.util.spec_from_file_location('export_onnx_tool', osp.join(ROOT, 'tools/deploy/export_onnx.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.slow
@pytest.mark.parametrize('task', list(TASKS))
def test_onnxruntime_scores_as_pytorch_on_the_demo_val_set(task, tmp_path, monkeypatch, capsys):
    from pelk_mm.apis import train_main
    config, train_options, ckpt, export_options = TASKS[task]
    monkeypatch.chdir(tmp_path)  # the launcher generates the demo data into ./data/demo
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    config = osp.join(ROOT, config)
    # validation only by the export tool below: train_cfg.val_interval past the end
    val_off = 'train_cfg.val_interval=1000'
    assert train_main([config, '--work-dir', 'work', '--cfg-options', *train_options, val_off, *QUIET]) == 0
    capsys.readouterr()
    out = str(tmp_path / f'{task}.onnx')
    assert _tool().main([config, osp.join('work', ckpt), out, '--val', '--cfg-options', *QUIET]
                        + export_options) == 0
    printed = capsys.readouterr().out
    line = [s for s in printed.splitlines() if s.startswith('validation set:')]
    assert len(line) == 1, printed
    found = dict((k, (float(a), float(b))) for k, a, b in
                 re.findall(r'([\w/]+) PyTorch ([0-9.]+) onnxruntime ([0-9.]+)', line[0]))
    print(task, found)
    assert found and set(found) <= set(BOUNDS), found
    for key, (torch_value, ort_value) in found.items():
        bound, floor = BOUNDS[key]
        assert abs(torch_value - ort_value) <= bound, (key, torch_value, ort_value)
        assert torch_value > floor, (key, torch_value)  # a trained model: the comparison means something
