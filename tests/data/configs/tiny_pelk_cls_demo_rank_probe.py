# tiny_pelk_cls_demo.py + a hook that writes per-rank facts (tests/data/rank_probe_hook.py must be importable,
# i.e. tests/data on PYTHONPATH) -- used by the multi-process launcher test.
_base_ = ['./tiny_pelk_cls_demo.py']
custom_imports = dict(imports=['pelk_mm', 'rank_probe_hook'], allow_failed_imports=False)
custom_hooks = [dict(type='RankProbeHook')]
