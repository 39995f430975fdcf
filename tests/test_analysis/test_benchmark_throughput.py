import json

import pytest


@pytest.fixture
def bench_tool(load_tool):
    return load_tool('benchmark_throughput')


@pytest.mark.parametrize('extra_args', [[], ['--deploy', '--channels-last']])
def test_benchmark_cpu(bench_tool, tmp_path, tiny_config, extra_args):
    out = tmp_path / 'bench.json'
    assert bench_tool.main([tiny_config, '--device', 'cpu', '--batch-size', '2', '--shape', '32', '--warmup', '1',
                            '--iters', '2', '--json', str(out)] + extra_args) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 1
    r = rows[0]
    assert r['images_per_s'] > 0 and r['ms_per_batch'] > 0
    assert r['batch_size'] == 2 and r['shape'] == [32, 32] and r['deploy'] == ('--deploy' in extra_args)
    assert r['images_per_s'] == pytest.approx(2 * 1000 / r['ms_per_batch'], rel=1e-6)


def test_benchmark_rejects_bad_args(bench_tool, tiny_config):
    with pytest.raises(SystemExit):
        bench_tool.main([tiny_config, '--batch-size', '0'])
    with pytest.raises(SystemExit):
        bench_tool.main([tiny_config, '--shape', '1', '2', '3'])
