"""The suite's Runners do not share mmengine state across tests (tests/conftest.py drops the message hubs,
loggers and visualizers a test created). A Runner takes its message hub with ``MessageHub.get_instance(<experiment
name>_<timestamp to the second>)``, so two tests' Runners of the same name created in the same second shared one
(its best score, its checkpoint ids): the second test here fails when the first one's hub leaks into it."""
from mmengine.logging import MessageHub, MMLogger

NAME = 'pelk_isolation_20260101_000000'  # what two Runners named 'pelk_isolation' in the same second both get


def test_a_runner_records_something():
    hub = MessageHub.get_instance(NAME)
    hub.update_info('best_score', 0.9)
    hub.update_info('keep_ckpt_ids', [4, 6])
    MMLogger.get_instance(NAME, log_level='WARNING')


def test_the_next_runner_of_that_name_starts_clean():
    assert NAME not in MessageHub._instance_dict and NAME not in MMLogger._instance_dict
    hub = MessageHub.get_instance(NAME)
    assert 'best_score' not in hub.runtime_info and 'keep_ckpt_ids' not in hub.runtime_info
