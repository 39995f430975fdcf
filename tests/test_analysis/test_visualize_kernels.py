import json

import pytest
from PIL import Image


@pytest.fixture
def kernels_tool(load_tool):
    return load_tool('visualize_kernels')


def test_grids_and_kernels_of_a_checkpoint(kernels_tool, tmp_path, tiny_config, tiny_checkpoint):
    out = tmp_path / 'k'
    assert kernels_tool.main([tiny_config, '--checkpoint', tiny_checkpoint, '--channels', '3', '--no-param-curve',
                              '--out-dir', str(out)]) == 0
    for i in range(4):
        for kind in ('grid', 'kernels'):
            with Image.open(out / f'stage{i}_{kind}.png') as img:
                assert min(img.size) > 100
    summary = json.loads((out / 'kernels.json').read_text())['stages']
    assert [s['kernel_size'] for s in summary] == [13, 11, 9, 7]
    assert summary[0]['grid'] == [2, 2, 1, 1, 1, 1, 1, 2, 2]
    # the checkpoint zeroed the first row of cells of stage 0: 2 of 13 dense rows (every column) are zero
    assert summary[0]['zero_fraction'] == pytest.approx(2 / 13)
    assert summary[1]['zero_fraction'] == 0


def test_stripe_kernels_are_cross_shaped(kernels_tool, tmp_path, config_factory):
    cfg = config_factory('stripe', ", conv_type='stripe', kpe_mode=None")
    out = tmp_path / 's'
    assert kernels_tool.main([cfg, '--no-param-curve', '--out-dir', str(out)]) == 0
    summary = json.loads((out / 'kernels.json').read_text())['stages']
    assert summary[0]['type'] == 'StripeConv2d'
    k = 13
    assert summary[0]['zero_fraction'] == pytest.approx(1 - (2 * k * 5 - 25) / k ** 2)


def test_param_curve_fig6(kernels_tool, tmp_path):
    out = tmp_path / 'c'
    assert kernels_tool.main(['--param-curve-only', '--kernel-sizes', '7', '13', '31', '--out-dir', str(out)]) == 0
    curve = json.loads((out / 'param_curve.json').read_text())
    blocks = 3 * 96 + 3 * 192 + 9 * 384 + 3 * 768  # convolved channels summed over the ConvNeXt-T blocks
    # 13x13 dense vs its 9x9 peripheral grid ([2,2,1,1,1,1,1,2,2]) vs 13x5+5x13 stripes
    assert curve['dense'][1] - curve['peripheral'][1] == blocks * (169 - 81)
    # (the stripe form has one BatchNorm more per block: 2 * C parameters)
    assert curve['stripe'][1] - curve['peripheral'][1] == blocks * (130 - 81) + 2 * blocks
    # at 7x7 with a 5x5 centre the grid is dense; growing K is cheap for peripheral, quadratic for dense
    assert curve['dense'][0] == curve['peripheral'][0]
    assert curve['dense'][2] - curve['dense'][0] == blocks * (31 ** 2 - 49)
    assert curve['peripheral'][2] - curve['peripheral'][0] == blocks * (11 ** 2 - 49)  # K=31: 11x11 cells (Fig. 1b)
    with Image.open(out / 'param_curve.png') as img:
        assert min(img.size) > 100


def test_needs_config_or_curve_only(kernels_tool):
    with pytest.raises(SystemExit):
        kernels_tool.main([])
    with pytest.raises(SystemExit):
        kernels_tool.main(['--param-curve-only', '--kernel-sizes', '8'])


def _images_and_bars(fig):
    """The axes holding an image, and the colour-bar labels of the figure."""
    images = [ax for ax in fig.axes if ax.images]
    bars = [ax.get_ylabel() for ax in fig.axes if not ax.images and not ax.patches and ax.get_ylabel()]
    return images, bars


def test_pictures_explain_themselves(kernels_tool, tmp_path):
    """Every kernel image has a labelled colour bar, tap-offset axes and a title saying what is shown; the grid has a
    legend for shared and unshared cells."""
    import torch
    from pelk_mm.models.layers import PeripheralConv2d
    conv = PeripheralConv2d(4, 13, center_size=5)
    kernel = torch.randn(4, 13, 13)
    fig = kernels_tool.plot_kernels(kernel, str(tmp_path / 'k.png'), 'stage 0', channels=2)
    images, bars = _images_and_bars(fig)
    assert len(images) == 3 and len(bars) == 3 and set(bars) == {'mean |weight|', 'weight'}
    assert all(ax.get_title() for ax in images)
    assert images[0].get_xlabel() and images[0].get_ylabel()
    assert 'effective weight of every tap' in fig._suptitle.get_text()
    # the image axes span the tap offsets -6 .. 6 (13 taps, centred)
    assert images[1].get_xlim() == pytest.approx((-6.5, 6.5))

    fig = kernels_tool.plot_grid(conv, str(tmp_path / 'g.png'), 'stage 0')
    ax = fig.axes[0]
    assert 'offset from the centre' in ax.get_xlabel() and ax.get_ylabel()
    assert '9x9 weights cover the 13x13 kernel' in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ['one weight per tap', 'one weight shared by the cell']
    assert [t.get_text() for t in ax.get_xticklabels()][:2] == ['-6.5', '-4.5']

    fig = kernels_tool.plot_overview(conv, kernel, str(tmp_path / 'o.png'), 'stage 0')
    images, bars = _images_and_bars(fig)
    assert len(images) == 1 and bars == ['mean |weight| over 4 channels']
    assert all(ax.get_xlabel() for ax in fig.axes[:2]) and fig._suptitle.get_text() == 'stage 0'
