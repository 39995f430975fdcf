import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def erf_tool(load_tool):
    return load_tool('visualize_erf')


def test_ratios_on_synthetic_maps():
    from pelk_mm.analysis.erf import high_contribution_ratios
    delta = np.zeros((41, 41))
    delta[20, 20] = 1e6
    r = high_contribution_ratios(delta)
    assert all(v['side'] == 3 for v in r.values())  # smallest square the RepLKNet search considers
    uniform = np.ones((101, 101))
    r = high_contribution_ratios(uniform, (0.2, 0.5, 0.99))
    for t, v in r.items():
        assert v['area_ratio'] == pytest.approx(float(t), abs=0.05)


def test_erf_tool_end_to_end(erf_tool, tmp_path, tiny_config, tiny_checkpoint, image_dir):
    out = tmp_path / 'erf'
    rc = erf_tool.main([tiny_config, '--checkpoint', tiny_checkpoint, '--data', image_dir, '--num-images', '2',
                        '--input-size', '64', '--out-dir', str(out)])
    assert rc == 0
    erf = np.load(out / 'erf.npy')
    assert erf.shape == (64, 64) and erf.max() > 0
    # the gradient of the central output concentrates around the centre
    c = erf[24:40, 24:40].mean()
    assert c > erf[:8, :8].mean()
    report = json.loads((out / 'erf.json').read_text())
    assert report['num_images'] == 2
    ratios = [report['ratios'][str(t)]['area_ratio'] for t in (0.2, 0.3, 0.5, 0.99)]
    assert all(r is not None for r in ratios) and ratios == sorted(ratios) and 0 < ratios[0] <= ratios[-1] <= 1
    with Image.open(out / 'erf.png') as img:
        assert img.size[0] > 100


def test_erf_tool_rejects_bad_thresholds(erf_tool, tiny_config, capsys):
    from pelk_mm.errors import LaunchError
    from pelk_mm.apis.cli import run_main
    with pytest.raises(SystemExit):
        erf_tool.main([tiny_config, '--thresholds', '1.5'])
    with pytest.raises(LaunchError, match='does not exist'):
        erf_tool.main([tiny_config + '.missing', '--num-images', '1'])
    capsys.readouterr()
    # as the script's __main__ runs it: one line, exit status 2
    assert run_main(lambda: erf_tool.main([tiny_config + '.missing']), (FileNotFoundError, )) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: config file '{tiny_config}.missing' does not exist"]


def test_erf_picture_has_axes_scale_and_says_what_is_normalised(erf_tool, tmp_path):
    erf = np.zeros((64, 48))
    erf[32, 24] = 10.0
    fig = erf_tool.save_heatmap(erf, str(tmp_path / 'erf.png'), 'ERF demo')
    ax = next(a for a in fig.axes if a.images)
    assert 'pixels from the centre' in ax.get_xlabel() and 'pixels from the centre' in ax.get_ylabel()
    assert ax.get_xlim() == pytest.approx((-24, 24)) and ax.get_ylim() == pytest.approx((32, -32))
    assert 'centre output of the last stage' in ax.get_title()
    bar = next(a for a in fig.axes if not a.images)
    assert 'log10(1 + ' in bar.get_ylabel() and 'divided by its maximum' in bar.get_ylabel()
