"""The launchers' console: progress, results and warnings; mmengine's dumps go to the log file only."""
import logging

from pelk_mm.apis.console import ConsoleFilter, quiet_console, quiet_runner_class


def _record(message, level=logging.INFO):
    return logging.LogRecord('mmengine', level, __file__, 1, message, None, None)


def test_filter_keeps_progress_results_and_warnings():
    f = ConsoleFilter()
    keep = ['Epoch(train)  [1][9/9]  lr: 2.0e-03  loss: 1.79', 'Epoch(val) [4][2/2]    accuracy/top1: 23.6111',
            'Saving checkpoint at 4 epochs', 'Checkpoints will be saved to /tmp/w.']
    for message in keep:
        assert f.filter(_record(message)), message
    assert f.filter(_record('Config: this is a warning about the config', logging.WARNING))
    assert f.filter(_record('"FileClient" will be deprecated', logging.ERROR))


def test_filter_drops_dumps_and_internal_notices():
    f = ConsoleFilter()
    drop = ['Config:\nauto_scale_lr = dict(base_batch_size=32)\n', '\n' + '-' * 60 + '\nSystem environment:\n  sys',
            'Hooks will be executed in the following order:\nbefore_run:', 'Exp name: pelk_demo_in1k_2026',
            'paramwise_options -- backbone.stages.0.gamma:weight_decay=0.0',
            'The previous best checkpoint /w/best_accuracy_top1_epoch_4.pth is removed',
            'Loads checkpoint by local backend from path: x.pth']
    for message in drop:
        assert not f.filter(_record(message)), message
    assert not f.filter(_record('"FileClient" will be deprecated in future.', logging.WARNING))
    # mmseg's per-class table: the header and the table record that follows it, nothing after
    assert not f.filter(_record('per class results:'))
    assert not f.filter(_record('\n+-------+-------+\n| Class |  IoU  |\n'))
    assert f.filter(_record('Iter(val) [8/8]    aAcc: 96.1  mIoU: 90.1'))
    assert f.filter(_record('+ a message that merely starts with a plus'))


def test_only_console_handlers_are_filtered(tmp_path):
    from mmengine.logging import MMLogger
    logger = MMLogger.get_instance('pelk_mm_console_test', log_file=str(tmp_path / 'run.log'))
    quiet_console(logger)
    quiet_console(logger)  # once per handler
    console = [h for h in logger.handlers if not isinstance(h, logging.FileHandler)]
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    assert console and files
    assert all(sum(isinstance(f, ConsoleFilter) for f in h.filters) == 1 for h in console)
    assert not any(isinstance(f, ConsoleFilter) for h in files for f in h.filters)
    logger.info('Config:\nsecret = 1')
    for h in files:
        h.flush()
    assert 'secret = 1' in (tmp_path / 'run.log').read_text()


def test_verbose_keeps_the_runner_class(monkeypatch):
    from mmengine.runner import Runner
    monkeypatch.setenv('PELK_MM_VERBOSE', '1')
    assert quiet_runner_class(Runner) is Runner
    monkeypatch.delenv('PELK_MM_VERBOSE')
    quiet = quiet_runner_class(Runner)
    assert issubclass(quiet, Runner) and quiet.__name__ == 'Runner'
