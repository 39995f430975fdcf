"""The stock mmpretrain / mmdet / mmseg tools (shipped in each package's ``.mim/tools``) on the PeLK demo configs,
run as a user runs them: the config's ``custom_imports`` brings in pelk_mm. docs/stock_tools.md lists which tools
work, which fail upstream and the workarounds."""
import json
import re
from pathlib import Path

import pytest

import mmdet
import mmpretrain
import mmseg

DEMO = Path(__file__).resolve().parents[2] / 'configs' / 'demo'
CLS, SEG, DET = (DEMO / f'pelk_demo_{n}.py' for n in ('in1k', 'upernet_ade20k', 'cascade_mask_rcnn_coco'))


def _stock(package, tool: str) -> Path:
    return Path(package.__file__).parent / '.mim' / 'tools' / tool


@pytest.fixture(scope='module')
def cwd(tmp_path_factory, demo_root):
    """A working directory whose data/demo holds the three demo datasets (the configs' relative data roots)."""
    cwd = tmp_path_factory.mktemp('stock')
    (cwd / 'data').mkdir()
    (cwd / 'data' / 'demo').symlink_to(demo_root, target_is_directory=True)
    return cwd


def _ok(tools, args, cwd, timeout=240):
    r = tools.run([tools.PY, *args], cwd=cwd, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'Traceback' not in r.stderr, r.stderr[-3000:]
    return r


#: runs several tools one after the other in one process (``runpy``, as ``python TOOL ARGS`` runs each): the
#: imports of torch and the codebases are paid once
_SEQUENCE = """
import json, runpy, sys
for i, argv in enumerate(json.loads(sys.argv[1])):
    print(f'=== tool {i} ===', flush=True)
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name='__main__')
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
"""


def _ok_each(tools, argvs, cwd, timeout=300):
    """The stdout of each tool of ``argvs`` (lists of arguments, the tool's path first), run by :data:`_SEQUENCE`."""
    r = _ok(tools, ['-c', _SEQUENCE, json.dumps([[str(a) for a in argv] for argv in argvs])], cwd, timeout)
    outputs = re.split(r'=== tool \d+ ===\n', r.stdout)[1:]
    assert len(outputs) == len(argvs), r.stdout[-3000:]
    return outputs


@pytest.fixture(scope='module')
def cls_run(tools, cwd):
    """Two epochs of the classification demo as configured (9 iterations per epoch, its logger interval)."""
    work = cwd / 'cls_work'
    _ok(tools, [tools.REPO / 'tools/train.py', CLS, '--work-dir', work, '--cfg-options', 'train_cfg.max_epochs=2',
                'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2'], cwd)
    logs = sorted(work.glob('*/vis_data/*.json'))
    assert [p.name for p in work.glob('epoch_2.pth')] and logs
    return work, logs[-1]


def test_mmpretrain_config_tools(tools, cwd, tmp_path):
    # browse_dataset builds UniversalVisualizer(**cfg.visualizer): the visualizer must be free of the `_scope_` key
    # that mmengine adds to what a config inherits through `mmpretrain::`
    out = tmp_path / 'browse'
    browse, printed, flops = _ok_each(tools, [
        [_stock(mmpretrain, 'visualization/browse_dataset.py'), CLS, '-o', out, '-n', '2', '-m', 'original',
         '--not-show'],
        [_stock(mmpretrain, 'misc/print_config.py'), CLS],
        [_stock(mmpretrain, 'analysis_tools/get_flops.py'), CLS, '--shape', '64']], cwd)
    assert len(list(out.glob('*.JPEG'))) == 2
    assert "type='pelk_mm.PeLK'" in printed
    assert re.search(r'Flops: [0-9.]+M\nParams: [0-9.]+M', flops), flops[-2000:]
    assert '(backbone): PeLK(' in flops


def test_mmpretrain_log_and_checkpoint_tools(tools, cwd, cls_run, tmp_path):
    work, json_log = cls_run
    # cal_train_time leaves out the first logged time of every epoch: a demo epoch needs more than one
    entries = [json.loads(line) for line in json_log.read_text().splitlines()]
    assert sum(1 for e in entries if e.get('epoch') == 1 and 'loss' in e) == 3
    pkl = tmp_path / 'cm.pkl'
    timing, _ = _ok_each(tools, [
        [_stock(mmpretrain, 'analysis_tools/analyze_logs.py'), 'cal_train_time', json_log],
        # confusion_matrix runs the checkpoint through its own Runner
        [_stock(mmpretrain, 'analysis_tools/confusion_matrix.py'), CLS, work / 'epoch_2.pth', '--out', pkl]], cwd)
    assert 'nan' not in timing, timing
    times = [float(t) for t in re.findall(r'average time is ([0-9.]+)', timing)]
    assert len(times) == 2 and all(t > 0 for t in times), timing
    # the matrix holds every validation image once
    import mmengine
    matrix = mmengine.load(str(pkl))
    assert tuple(matrix.shape) == (6, 6) and int(matrix.sum()) == len(list((cwd / 'data/demo/imagenet/val').rglob(
        '*.JPEG')))


def test_mmdet_and_mmseg_config_tools(tools, cwd, tmp_path):
    out = tmp_path / 'browse'
    browse, flops, det_config, seg_config = _ok_each(tools, [
        [_stock(mmdet, 'analysis_tools/browse_dataset.py'), DET, '--output-dir', out, '--not-show', '--cfg-options',
         'train_dataloader.dataset.indices=3'],
        [_stock(mmdet, 'analysis_tools/get_flops.py'), DET, '--num-images', '1'],
        [_stock(mmdet, 'misc/print_config.py'), DET],
        [_stock(mmseg, 'misc/print_config.py'), SEG]], cwd)
    assert len(list(out.glob('*.jpg'))) == 3
    assert re.search(r'Flops: [0-9.]+G\nParams: [0-9.]+M', flops), flops[-2000:]
    assert "type='pelk_mm.PeLK'" in det_config and "type='pelk_mm.PeLK'" in seg_config
