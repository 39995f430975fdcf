"""The classification launcher with mmcv built without compiled ops (the ``mmcv-lite`` wheel that travels to a machine
whose torch the compiled ``mmcv._ext`` was not built for)."""

PRELUDE = r'''
import importlib.metadata as md
import runpy
import sys

# mmcv._ext cannot be imported and importlib finds no spec for it, as in a build with MMCV_WITH_OPS=0
sys.modules['mmcv._ext'] = None
# the installed distribution is mmcv-lite (a dist-info in argv[1]), not mmcv
_find = md.MetadataPathFinder.find_distributions.__func__
md.MetadataPathFinder.find_distributions = classmethod(
    lambda cls, *a, **k: (d for d in _find(cls, *a, **k) if d.metadata['Name'] != 'mmcv'))
sys.path.append(sys.argv[1])
assert md.version('mmcv-lite') == '2.1.0'
try:
    md.version('mmcv')
    raise AssertionError('the mmcv distribution is still visible')
except md.PackageNotFoundError:
    pass
sys.argv = sys.argv[2:]
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
finally:
    from mmengine.utils.dl_utils import mmcv_full_available
    bricks = sys.modules.get('mmcv.cnn.bricks.transformer')
    without = bricks is not None and not hasattr(bricks, 'MultiScaleDeformableAttention')
    print(f'mmcv with compiled ops: {mmcv_full_available()}; transformer bricks imported without '
          f'MultiScaleDeformableAttention: {without}', flush=True)
'''


def test_classification_training_without_mmcv_compiled_ops(tools, tmp_path):
    lite = tmp_path / 'lite_site' / 'mmcv_lite-2.1.0.dist-info'
    lite.mkdir(parents=True)
    (lite / 'METADATA').write_text('Metadata-Version: 2.1\nName: mmcv-lite\nVersion: 2.1.0\n')
    prelude = tmp_path / 'prelude.py'
    prelude.write_text(PRELUDE)
    r = tools.run([tools.PY, prelude, lite.parent, tools.REPO / 'tools' / 'train.py', tools.TINY_CLS,
                   '--work-dir', tmp_path / 'work', '--cfg-options', 'train_cfg.max_epochs=1',
                   'train_dataloader.dataset.indices=32', 'val_dataloader.dataset.indices=12'], cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert 'pelk_mm: train finished: accuracy/top1 ' in out
    # mmpretrain's models import mmcv's transformer bricks, which ask for a compiled op and go on without it
    assert 'mmcv with compiled ops: False; transformer bricks imported without MultiScaleDeformableAttention: True' \
        in out, out[-3000:]
    # pelk_mm's patches read the version of mmcv-lite as mmcv's: no "written for mmcv 2.1.0, found None" warning
    assert 'written for mmcv' not in out, out[-3000:]
