"""``pelk_mm.compat.elastic_attempt_store``: process-group rendezvous keys are namespaced by torchrun restart
attempt, so a restarted worker cannot read an address the previous attempt left in the agent's shared store."""
from datetime import timedelta

import torch.distributed as dist

from pelk_mm.compat import elastic_attempt_store


def _agent_env(monkeypatch, port, restart_count):
    for k, v in dict(TORCHELASTIC_USE_AGENT_STORE='True', TORCHELASTIC_RESTART_COUNT=str(restart_count),
                     MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), WORLD_SIZE='2').items():
        monkeypatch.setenv(k, v)


def test_no_agent_store_means_plain_env_rendezvous(monkeypatch):
    monkeypatch.delenv('TORCHELASTIC_USE_AGENT_STORE', raising=False)
    assert elastic_attempt_store() is None
    monkeypatch.setenv('TORCHELASTIC_USE_AGENT_STORE', 'False')
    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '0')
    assert elastic_attempt_store() is None


def test_keys_of_each_attempt_are_separate(monkeypatch):
    agent = dist.TCPStore('127.0.0.1', 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10))
    _agent_env(monkeypatch, agent.port, 0)
    first = elastic_attempt_store(timedelta(seconds=10))
    first.set('default_pg/0//cpu//0/0', b'address of the attempt-0 rank 0')
    _agent_env(monkeypatch, agent.port, 1)
    second = elastic_attempt_store(timedelta(seconds=10))
    assert not second.check(['default_pg/0//cpu//0/0'])  # the dead worker's address is not visible
    second.set('default_pg/0//cpu//0/0', b'attempt-1 address')
    assert first.get('default_pg/0//cpu//0/0') == b'address of the attempt-0 rank 0'
    assert sorted(agent.list_keys()) == ['/worker/attempt_0/default_pg/0//cpu//0/0',
                                         '/worker/attempt_1/default_pg/0//cpu//0/0']
