"""The logic behind ``tools/train.py`` and ``tools/test.py``: one launcher for mmpretrain, mmseg and mmdet configs.

The stock ``train.py``/``test.py`` of the three codebases differ in small ways (resume semantics, AMP, dataloader
defaults, the test-time flags). These functions reproduce the behaviour users know from each codebase, chosen by the config's ``default_scope``:

* the codebase's modules are registered (``<codebase>.utils.register_all_modules``);
* ``--resume [PATH]`` (mmpretrain/mmdet semantics everywhere: no value = auto-resume from ``work_dir``);
* ``--amp`` (``AmpOptimWrapper`` with dynamic loss scale); without CUDA (or another AMP device) it falls back to
  fp32 with a warning, and a config that hard-codes ``AmpOptimWrapper`` (the stock seg/det recipes) is switched to
  ``OptimWrapper`` with a logged warning instead of failing in mmengine's assert;
* ``--auto-scale-lr``, ``--no-validate`` and mmpretrain's dataloader defaults;
* test: ``--out`` (mmpretrain ``DumpResults`` / mmseg ``output_dir`` / mmdet ``DumpDetResults``), ``--show`` and
  ``--show-dir`` wired into each codebase's visualization hook, ``--tta``;
* ``demo_data = dict(kind=..., root=...)`` in a config generates the synthetic demo dataset when missing, and
  missing real data stops the run before anything is built with one paragraph saying what to download;
* the Runner comes from ``RUNNERS`` when ``runner_type`` is set, else ``Runner.from_cfg``.

``--cfg-options`` is merged last, after every other flag (mmpretrain's order), so an explicit ``key=value`` always
wins. Importing this module imports :mod:`pelk_mm` (safe checkpoint loading, atomic writes); the entry points
add the launcher patches of :func:`pelk_mm.compat.apply_launcher_patches`.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import logging
import os
import os.path as osp
from typing import List, Optional, Sequence

from mmengine.config import Config, ConfigDict, DictAction

from pelk_mm import compat  # noqa: F401  (safe checkpoint loading, atomic writes)

from pelk_mm.config import get_codebase, load_config, merge_cfg_options, register_codebase
from pelk_mm.errors import LaunchError, MissingDataError
from pelk_mm.models import check_model_checkpoint  # also registers pelk_mm.PeLK

from .check_data import check_data_paths

__all__ = [
    'add_config_tool_args', 'parse_tool_args', 'add_trust_checkpoint_arg', 'apply_trust_checkpoint', 'build_train_parser', 'build_test_parser',
    'parse_train_args', 'parse_test_args', 'merge_train_args', 'merge_test_args', 'amp_device_available',
    'resolve_amp', 'prepare_data', 'build_runner', 'check_launcher', 'check_load_from', 'train', 'test',
    'train_main', 'test_main'
]

_AMP_ONLY_KEYS = ('loss_scale', 'dtype', 'use_fsdp')


# --------------------------------------------------------------------------------------------------- parsers
_CFG_OPTIONS_HELP = (
    'override settings of the config: key=value pairs (nested keys with dots, lists as key="[a,b]" or key=a,b, '
    'no spaces). Merged last, after every other flag.')


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help=_CFG_OPTIONS_HELP)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (tools/dist_*.sh pass pytorch, tools/slurm_*.sh pass slurm)')
    add_trust_checkpoint_arg(parser)
    parser.add_argument('--verbose', action='store_true',
                        help='print everything mmengine logs (environment, merged config, hook order, per-class '
                             'tables ...); without it these go to the log file only')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank; torchrun sets LOCAL_RANK
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)


def add_trust_checkpoint_arg(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint [PATH_OR_SHA256]`` (repeatable): the checkpoints that may need more than the safe
    allow-list, each named; without a value, the checkpoint given to the tool (see :func:`apply_trust_checkpoint`)."""
    from pelk_mm.checkpoint import TRUST_ENV
    parser.add_argument(
        '--trust-checkpoint', nargs='?', action='append', const='', metavar='PATH_OR_SHA256',
        help=f'load this checkpoint although the safe loader refuses it (it needs pickled globals beyond tensors '
             f'and plain data, so unpickling it can run code): only for a file whose source you trust. It names one '
             f'file: a path, sha256:<hex digest> of its content, or an exact URL; repeat it for more. Without a '
             f'value: the checkpoint given to this tool (test.py\'s CHECKPOINT, --checkpoint, --resume PATH). Every '
             f'other checkpoint the run loads is still refused. Same as {TRUST_ENV}=PATH (several separated by '
             f'{os.pathsep!r}); each such load is logged as a warning')


def add_config_tool_args(parser: argparse.ArgumentParser) -> None:
    """``--cfg-options`` and ``--trust-checkpoint``, the flags every config-reading tool of ``tools/`` shares."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help=_CFG_OPTIONS_HELP)
    add_trust_checkpoint_arg(parser)


def parse_tool_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None):
    """Parse a tool's command line and apply ``--trust-checkpoint`` (see :func:`add_config_tool_args`)."""
    args = parser.parse_args(argv)
    apply_trust_checkpoint(args)
    return args


def apply_trust_checkpoint(args) -> None:
    """Add the checkpoints ``--trust-checkpoint`` names to the environment list the loader reads (inherited by worker
    processes, so ``tools/dist_*.sh`` workers trust the same files).

    Each value is normalised by :func:`pelk_mm.checkpoint.trust_entry` (a real path, ``sha256:<hex>`` or the URL);
    a bare flag stands for the checkpoint the tool is given (``args.checkpoint``, else ``--resume PATH``). A value
    that names nothing, a bare flag where the tool is given no checkpoint, or the old
    ``PELK_MM_TRUST_CHECKPOINTS=1`` is one ``error:`` line on stderr and exit status 2 (as argparse's errors)."""
    import sys

    from pelk_mm.checkpoint import set_trust_checkpoints, trust_entry, trusted_entries
    from pelk_mm.errors import CheckpointLoadError, exit_code, format_user_error
    values = getattr(args, 'trust_checkpoint', None)
    values = [''] if values is True else list(values or [])
    try:
        entries = list(trusted_entries())
        for value in values:
            if value == '':
                resume = getattr(args, 'resume', None)
                value = getattr(args, 'checkpoint', None) or (resume if resume not in (None, 'auto') else None)
                if not value:
                    raise CheckpointLoadError(
                        '--trust-checkpoint without a value names the checkpoint given to the tool, and this '
                        'command gives none. Fix: name the file you trust: --trust-checkpoint /path/to/file.pth '
                        '(or sha256:<hex digest>, or its exact URL)')
            entries.append(trust_entry(value))
    except CheckpointLoadError as err:
        print(format_user_error(err), file=sys.stderr, flush=True)
        raise SystemExit(exit_code(err)) from None
    if values:
        set_trust_checkpoints(entries)


def build_train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Train a model of an mmpretrain / mmseg / mmdet config (dispatched on its default_scope)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models (default: ./work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the given checkpoint, or without a value from the latest checkpoint in '
                             'the work dir')
    parser.add_argument('--resume-other-world-size', action='store_true',
                        help='resume with another number of processes than the checkpoint\'s run: the per-process '
                             'batch size is rescaled so the global batch, the schedule and the lr stay the same '
                             '(without it such a resume is refused)')
    parser.add_argument('--resume-with-changes', action='store_true',
                        help='resume although the config\'s model, optimizer, lr schedule or batch size differ from '
                             'the checkpoint\'s recipe: the config\'s values apply (the lr schedule is re-applied at '
                             'the resumed iteration); without it such a resume is refused, listing the changes')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (AmpOptimWrapper, dynamic loss scale); needs CUDA, falls '
                             'back to fp32 with a warning without it')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by (total batch size / auto_scale_lr.base_batch_size)')
    parser.add_argument('--no-validate', action='store_true', help='do not evaluate during training')
    parser.add_argument('--no-pin-memory', action='store_true',
                        help='disable pin_memory in the dataloaders (mmpretrain configs)')
    parser.add_argument('--no-persistent-workers', action='store_true',
                        help='disable persistent_workers in the dataloaders (mmpretrain configs)')
    _add_common(parser)
    return parser


def build_test_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a checkpoint of an mmpretrain / mmseg / mmdet config')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics (default: ./work_dirs/<config>)')
    parser.add_argument('--out', help='mmpretrain: pickle of predictions (or metrics with --out-item metrics); '
                                      'mmseg: directory for the predicted masks; mmdet: .pkl of predictions')
    parser.add_argument('--out-item', choices=['metrics', 'pred'],
                        help='mmpretrain only: what --out holds (default: pred)')
    parser.add_argument('--show', action='store_true', help='show prediction results in a window')
    parser.add_argument('--show-dir', help='directory where painted prediction images are saved')
    parser.add_argument('--interval', type=int, default=1, help='visualize every N-th sample')
    parser.add_argument('--wait-time', type=float, default=2, help='display time of each window (s)')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation: the config\'s tta_model/tta_pipeline, else flip TTA '
                             '(mmpretrain, mmdet)')
    _add_common(parser)
    return parser


def _finish_args(args):
    apply_trust_checkpoint(args)
    if getattr(args, 'verbose', False):
        from .console import VERBOSE_ENV
        os.environ[VERBOSE_ENV] = '1'
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def parse_train_args(argv: Optional[Sequence[str]] = None):
    return _finish_args(build_train_parser().parse_args(argv))


def parse_test_args(argv: Optional[Sequence[str]] = None):
    args = build_test_parser().parse_args(argv)
    if args.out_item is not None and args.out is None:
        build_test_parser().error('--out-item needs --out (the file to write)')
    return _finish_args(args)


# --------------------------------------------------------------------------------------------------- merging
def _set_work_dir(cfg, work_dir: Optional[str], config_path: str) -> None:
    # priority: CLI > config > ./work_dirs/<config stem>
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def _type_name(t) -> str:
    if isinstance(t, str):
        return t.split('.')[-1]
    return getattr(t, '__name__', str(t))


def amp_device_available() -> bool:
    """Whether mmengine's ``AmpOptimWrapper`` can run here (it asserts CUDA, NPU, MLU or MUSA)."""
    from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
    return bool(is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available())


def resolve_amp(cfg, amp: bool = False, amp_available: Optional[bool] = None) -> List[str]:
    """Apply ``--amp`` and make an ``AmpOptimWrapper`` config runnable on this machine.

    Returns the warnings to log (empty when nothing was changed). ``amp_available`` defaults to
    :func:`amp_device_available`.
    """
    if amp_available is None:
        amp_available = amp_device_available()
    notes: List[str] = []
    ow = cfg.get('optim_wrapper', None)
    if ow is None:
        if amp:
            raise LaunchError('--amp needs an `optim_wrapper` in the config, which has none')
        return notes
    current = _type_name(ow.get('type', 'OptimWrapper'))
    if amp:
        if current not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise LaunchError(
                f'--amp replaces optim_wrapper.type with AmpOptimWrapper, but the config uses '
                f'optim_wrapper.type={ow.get("type")!r}; drop --amp or set optim_wrapper.type to OptimWrapper')
        if amp_available:
            if current == 'AmpOptimWrapper':
                notes.append('--amp: the config already uses AmpOptimWrapper; keeping it')
            ow.type = 'AmpOptimWrapper'
            ow.setdefault('loss_scale', 'dynamic')
            return notes
        notes.append('--amp was given but no CUDA/NPU/MLU/MUSA device is available (mmengine\'s AmpOptimWrapper '
                     'needs one): training in fp32 with OptimWrapper instead')
    if current == 'AmpOptimWrapper' and not amp_available:
        dropped = {k: ow.pop(k) for k in _AMP_ONLY_KEYS if k in ow}
        ow.type = 'OptimWrapper'
        if not amp:
            notes.append(f'the config uses optim_wrapper.type=AmpOptimWrapper but no CUDA/NPU/MLU/MUSA device is '
                         f'available: training in fp32 with OptimWrapper'
                         + (f' (ignoring {dropped})' if dropped else ''))
    return notes


def _mmpretrain_dataloader_defaults(cfg, no_pin_memory: bool, no_persistent_workers: bool,
                                    fields: Sequence[str]) -> None:
    """mmpretrain's tools default to default_collate + pin_memory + persistent_workers."""
    import torch
    for field in fields:
        loader = cfg.get(field, None)
        if loader is None:
            continue
        merged = ConfigDict(collate_fn=dict(type='default_collate'))
        if torch.cuda.is_available() and not no_pin_memory:
            merged.pin_memory = True
        if loader.get('num_workers', 0) > 0 and not no_persistent_workers:
            merged.persistent_workers = True
        merged.update(loader)
        if no_pin_memory:
            merged.pin_memory = False
        if no_persistent_workers or merged.get('num_workers', 0) == 0:
            merged.pop('persistent_workers', None)
        cfg[field] = merged


def merge_train_args(cfg, args) -> Config:
    """Apply the train CLI flags to ``cfg`` (in place; also returned). Needs ``cfg.default_scope``."""
    codebase = get_codebase(cfg, args.config)
    cfg.launcher = args.launcher
    _set_work_dir(cfg, args.work_dir, args.config)

    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if '://' not in args.resume and not osp.isfile(args.resume):
            raise LaunchError(f'--resume {args.resume}: no such checkpoint file. Give an existing .pth, or '
                              f'--resume without a value to resume from the latest checkpoint in the work dir')
        cfg.resume = True
        cfg.load_from = args.resume

    if args.auto_scale_lr:
        asl = cfg.get('auto_scale_lr', None)
        if not asl or 'base_batch_size' not in asl:
            raise LaunchError(
                '--auto-scale-lr needs `auto_scale_lr = dict(base_batch_size=<total batch size the lr was tuned '
                'for>)` in the config, which has ' + (f'auto_scale_lr={asl!r}' if asl else 'none'))
        asl.enable = True

    if codebase == 'mmpretrain':
        _mmpretrain_dataloader_defaults(cfg, args.no_pin_memory, args.no_persistent_workers,
                                        ('train_dataloader', 'val_dataloader', 'test_dataloader'))
    else:
        for field in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            loader = cfg.get(field, None)
            if loader is None:
                continue
            if args.no_pin_memory:
                loader.pin_memory = False
            if args.no_persistent_workers:
                loader.persistent_workers = False

    # --amp is resolved by resolve_amp() once the whole config is known (after --cfg-options)
    if args.cfg_options is not None:
        merge_cfg_options(cfg, args.cfg_options)
    return cfg


def _visualization_hook(cfg):
    hooks = cfg.get('default_hooks', None) or {}
    if 'visualization' not in hooks or hooks['visualization'] is None:
        raise LaunchError('--show/--show-dir need a visualization hook: add '
                          'default_hooks = dict(visualization=dict(type=\'VisualizationHook\')) (mmpretrain), '
                          '\'SegVisualizationHook\' (mmseg) or \'DetVisualizationHook\' (mmdet) to the config')
    return hooks['visualization']


def merge_test_args(cfg, args) -> Config:
    """Apply the test CLI flags to ``cfg`` (in place; also returned)."""
    codebase = get_codebase(cfg, args.config)
    cfg.launcher = args.launcher
    _set_work_dir(cfg, args.work_dir, args.config)
    ckpt = args.checkpoint
    if '://' not in ckpt and not osp.isfile(ckpt):
        raise LaunchError(f'checkpoint {ckpt!r} does not exist; give the .pth written by tools/train.py (e.g. '
                          f'work_dirs/<config>/epoch_N.pth or iter_N.pth) or a URL')
    cfg.load_from = ckpt

    if args.show or args.show_dir:
        hook = _visualization_hook(cfg)
        if codebase == 'mmpretrain':
            hook.enable = True
            hook.show = args.show
            hook.wait_time = args.wait_time
            hook.out_dir = args.show_dir
            hook.interval = args.interval
        else:
            hook.draw = True
            hook.interval = args.interval
            if args.show:
                hook.show = True
                hook.wait_time = args.wait_time
            if args.show_dir:
                if codebase == 'mmseg':
                    if cfg.get('visualizer', None) is None:
                        raise LaunchError('--show-dir needs a `visualizer` (SegLocalVisualizer) in the config')
                    cfg.visualizer.save_dir = args.show_dir
                else:
                    hook.test_out_dir = args.show_dir

    if args.tta:
        _apply_tta(cfg, codebase)

    if args.out_item is not None and codebase != 'mmpretrain':
        raise LaunchError(f'--out-item is only supported for mmpretrain configs (this one is {codebase})')
    if args.out is not None:
        if codebase == 'mmseg':
            cfg.test_evaluator['output_dir'] = args.out
            cfg.test_evaluator['keep_results'] = True
        elif codebase == 'mmdet' and not args.out.endswith(('.pkl', '.pickle')):
            raise LaunchError(f'--out {args.out}: mmdet dumps predictions as a pickle; use a .pkl file name')

    if codebase == 'mmpretrain':
        _mmpretrain_dataloader_defaults(cfg, False, True, ('test_dataloader', ))
    if args.cfg_options is not None:
        merge_cfg_options(cfg, args.cfg_options)
    return cfg


def _innermost_dataset(dataset_cfg):
    while 'dataset' in dataset_cfg:
        dataset_cfg = dataset_cfg['dataset']
    return dataset_cfg


def _apply_tta(cfg, codebase: str) -> None:
    if codebase == 'mmseg':
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise LaunchError('--tta for mmseg needs `tta_model` and `tta_pipeline` in the config (mmseg\'s '
                              '_base_/datasets/*.py and default_runtime.py define them)')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
        return
    test_ds = _innermost_dataset(cfg.test_dataloader.dataset)
    if 'tta_model' not in cfg:
        if codebase == 'mmpretrain':
            cfg.tta_model = dict(type='mmpretrain.AverageClsScoreTTA')
        else:
            cfg.tta_model = dict(type='DetTTAModel',
                                 tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    if 'tta_pipeline' not in cfg:
        pipeline = copy.deepcopy(test_ds.pipeline)
        if codebase == 'mmpretrain':
            last = [pipeline[-1]]
        else:
            last = [dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                            'scale_factor', 'flip', 'flip_direction'))]
        pipeline[-1] = dict(type='TestTimeAug',
                            transforms=[[dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)], last])
        cfg.tta_pipeline = pipeline
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    test_ds.pipeline = cfg.tta_pipeline


# --------------------------------------------------------------------------------------------------- data
def prepare_data(cfg, mode: str, config_name: str = '', logger=None) -> List[str]:
    """Generate ``demo_data`` if the config asks for it, then check the dataset paths the run needs.

    Returns info messages; raises :class:`MissingDataError` (one paragraph) if a path is missing.
    """
    notes: List[str] = []
    demo_dir = None
    if cfg.get('demo_data', None) is not None:
        from pelk_mm.datasets import ensure_demo_data
        demo_dir = ensure_demo_data(cfg, logger=notes.append)
    try:
        check_data_paths(cfg, mode=mode, config_name=config_name)
    except MissingDataError as err:
        if demo_dir is not None:
            raise MissingDataError(
                f'{err} (note: the config\'s demo_data generated {demo_dir}, but `{err.key}` points elsewhere; '
                f'make the dataset paths point into {demo_dir})', err.key, err.path) from None
        raise
    return notes


# --------------------------------------------------------------------------------------------------- runner
def build_runner(cfg, codebase: str):
    """``RUNNERS.build(cfg)`` of the codebase when ``runner_type`` is set, else ``Runner.from_cfg(cfg)``.

    The ``runner_type`` is looked up in the codebase's registry (``_scope_``), not in whatever default scope an
    earlier Runner of the same process left current."""
    from .console import quiet_runner_class
    if 'runner_type' in cfg:
        runners = importlib.import_module(f'{codebase}.registry').RUNNERS
        cfg = cfg.copy()
        name = cfg.pop('runner_type')
        runner_cls = runners.get(name) if isinstance(name, str) else name
        if runner_cls is None:
            raise LaunchError(f'runner_type={name!r} is not a registered Runner of {codebase}; use one of '
                              f'{sorted(runners.module_dict)} or register yours with @RUNNERS.register_module()')
        return quiet_runner_class(runner_cls).from_cfg(cfg)
    from mmengine.runner import Runner
    return quiet_runner_class(Runner).from_cfg(cfg)


def _print_outcome(runner, what: str, metrics: Optional[dict] = None) -> None:
    """One closing line on rank 0: the final metrics, where the checkpoints and the full log are."""
    from mmengine.dist import is_main_process
    if not is_main_process():
        return
    from .console import final_metrics, log_file_of
    metrics = metrics if metrics is not None else final_metrics(runner)
    shown = ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in metrics.items()
                      if isinstance(v, (int, float)))
    where = f'; checkpoints in {runner.work_dir}' if what == 'train' else ''
    log = log_file_of(runner)
    print(f'pelk_mm: {what} finished: {shown or "no metrics"}{where}' + (f'; full log {log}' if log else ''),
          flush=True)


def _log(runner, notes: Sequence[str], level=logging.WARNING) -> None:
    from mmengine.logging import print_log
    for note in notes:
        print_log(note, logger=runner.logger if runner is not None else 'current', level=level)


def check_launcher(launcher: str, environ=None, cuda_available: Optional[bool] = None) -> None:
    """Clear errors for launcher/environment mismatches that mmengine reports as KeyError/ZeroDivisionError."""
    environ = os.environ if environ is None else environ
    if launcher == 'pytorch':
        missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT') if k not in environ]
        if missing:
            raise LaunchError(f'--launcher pytorch needs the variables torchrun sets ({", ".join(missing)} missing): '
                              f'start it with tools/dist_train.sh / tools/dist_test.sh CONFIG NPROC, or torchrun '
                              f'--nproc_per_node=N tools/train.py CONFIG --launcher pytorch; for one process use '
                              f'--launcher none')
    elif launcher == 'slurm':
        if 'SLURM_PROCID' not in environ:
            raise LaunchError('--launcher slurm must run inside srun (SLURM_PROCID is not set): use '
                              'tools/slurm_train.sh / tools/slurm_test.sh')
        if cuda_available is None:
            import torch
            cuda_available = torch.cuda.is_available()
        if not cuda_available:
            raise LaunchError('--launcher slurm needs GPUs on the node (mmengine selects a CUDA device per task); '
                              'on CPU-only nodes run tools/dist_train.sh inside the allocation instead '
                              '(--launcher pytorch with gloo)')
    elif launcher == 'mpi' and 'OMPI_COMM_WORLD_LOCAL_RANK' not in environ:
        raise LaunchError('--launcher mpi must run under Open MPI\'s mpirun (OMPI_COMM_WORLD_LOCAL_RANK is not set)')


def _prepare(cfg, args, mode: str):
    codebase = get_codebase(cfg, args.config)
    check_launcher(cfg.get('launcher', 'none'))
    info = prepare_data(cfg, mode, config_name=args.config)  # first: fail fast, before the heavy imports
    register_codebase(codebase)
    if codebase == 'mmdet':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    notes = []
    if mode == 'train':
        notes = resolve_amp(cfg, bool(args.amp))
    from .validate import validate_config  # config and checkpoint checks before the Runner is built
    notes += validate_config(cfg, mode, config_name=args.config,
                             resume_other_world_size=bool(getattr(args, 'resume_other_world_size', False)),
                             resume_with_changes=bool(getattr(args, 'resume_with_changes', False)))
    from .cpu_threads import apply_cpu_threads
    threads = apply_cpu_threads()
    return codebase, info + ([threads] if threads else []), notes


def _bare_model(model):
    """The model inside DDP / test-time-augmentation wrappers (whose weights a checkpoint holds)."""
    import torch.nn as nn
    while isinstance(getattr(model, 'module', None), nn.Module):
        model = model.module
    return model


#: config key: prefixes of model weights that ``load_from`` may lack or hold in another shape (fine-tuning)
LOAD_FROM_MISMATCH_KEY = 'load_from_mismatch'


def check_load_from(runner, cfg) -> List[str]:
    """``load_from`` (not resuming): weights the checkpoint lacks or holds in another shape are an error unless the
    config lists their prefixes in ``load_from_mismatch`` (e.g. ``['head.']`` for a new classifier); then they are
    one warning with the counts. Returns the warnings."""
    path = cfg.get('load_from', None)
    if not path or cfg.get('resume', False):
        return []
    from pelk_mm.checkpoint import checkpoint_weights, load_checkpoint_file, weights_mismatch
    allowed = cfg.get(LOAD_FROM_MISMATCH_KEY, None) or ()
    allowed = (allowed, ) if isinstance(allowed, str) else tuple(allowed)  # its type is checked by check_settings
    model = _bare_model(runner.model)
    weights = checkpoint_weights(load_checkpoint_file(path, map_location='cpu', mmap=True))
    problem = weights_mismatch(model, weights, allowed)
    if problem:
        raise LaunchError(
            f'load_from={path!r} does not fit the model: {problem}. Fix: use a checkpoint of this model, or, if '
            f'the difference is intended (e.g. a new head for fine-tuning), list the prefixes of those weights in the '
            f'config: {LOAD_FROM_MISMATCH_KEY} = [\'head.\']')
    if allowed:
        intended = weights_mismatch(model, weights)
        if intended:
            return [f'load_from={path!r}: {intended}; allowed by {LOAD_FROM_MISMATCH_KEY}={list(allowed)}, so '
                    f'those weights keep their initialisation']
    return []


def _remove_stale_writes(cfg) -> List[str]:
    """Remove what interrupted checkpoint writes left in the work dir (rank 0, holding the work dir's lock)."""
    from .validate import launcher_rank
    work_dir = cfg.get('work_dir', None)
    if not work_dir or not osp.isdir(work_dir) or launcher_rank(cfg.get('launcher', 'none')) != 0:
        return []
    from pelk_mm.checkpoint import remove_stale_writes
    removed = remove_stale_writes(work_dir)
    return [f'removed {len(removed)} temporary file(s) of an interrupted checkpoint save in {work_dir} '
            f'({", ".join(osp.basename(p) for p in removed[:3])})'] if removed else []


def train(args):
    """Build the Runner for the parsed train ``args`` and train. Returns the Runner.

    The launching process (rank 0) holds the work dir's lock until training ends, so a second run in the same work
    dir is refused instead of overwriting this one's checkpoints. A work dir that already has a lock file is locked
    before the checks (a running run there is named first); a new one only once the checks passed, so a run that
    fails them leaves nothing behind."""
    from .validate import check_train_batches, check_work_dir, lock_work_dir
    cfg = load_config(args.config)
    get_codebase(cfg, args.config)
    cfg = merge_train_args(cfg, args)
    check_work_dir(cfg)  # a file or an unwritable folder: one line, before the lock touches it
    lock, notes = lock_work_dir(cfg, create=False)
    try:
        codebase, info, more = _prepare(cfg, args, 'train')
        if lock is None:
            lock, locked = lock_work_dir(cfg)
            notes += locked
        notes += more + _remove_stale_writes(cfg)
        runner = build_runner(cfg, codebase)
        notes += check_load_from(runner, cfg)
        check_train_batches(runner)
        if cfg.get('resume', False) and getattr(args, 'resume_with_changes', False):
            from pelk_mm.engine.hooks import ResumeChangesHook
            runner.register_hook(ResumeChangesHook())
        _log(runner, info, logging.INFO)
        _log(runner, notes)
        runner.train()
    finally:
        if lock is not None:
            lock.release()
    _print_outcome(runner, 'train')
    return runner


def test(args):
    """Build the Runner for the parsed test ``args`` and test. Returns ``(runner, metrics)``."""
    cfg = load_config(args.config)
    codebase = get_codebase(cfg, args.config)
    cfg = merge_test_args(cfg, args)
    codebase, info, _ = _prepare(cfg, args, 'test')
    runner = build_runner(cfg, codebase)
    check_model_checkpoint(_bare_model(runner.model), args.checkpoint)
    _log(runner, info, logging.INFO)
    if args.out and codebase == 'mmpretrain' and args.out_item in ('pred', None):
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    elif args.out and codebase == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    metrics = runner.test()
    if args.out and codebase == 'mmpretrain' and args.out_item == 'metrics':
        import mmengine
        mmengine.dump(metrics, args.out)
    _print_outcome(runner, 'test', metrics)
    return runner, metrics


def _run_cli(fn, args) -> int:
    from pelk_mm.compat import apply_launcher_patches
    apply_launcher_patches()  # CPU/gloo launcher and elastic rendezvous: needed by these entry points only
    from .cli import run_cli  # user errors (config, data, checkpoint, non-finite stop) as one line, no traceback
    import signal
    import sys
    import threading

    import torch.distributed as torch_dist
    # NOTE: a single process stopped by SIGTERM (a scheduler, `kill`) or Ctrl-C says so in one line and exits
    # 128 + N; checkpoints are written atomically, and with ResumeStateHook (the shipped configs) the previous one
    # is rotated away only after the new one, so last_checkpoint names an intact file. Under torchrun the agent
    # reports the signal once for all workers (pelk_mm.apis.torchrun), so workers keep the default handling.
    single = getattr(args, 'launcher', 'none') == 'none' and threading.current_thread() is threading.main_thread()
    resume = '; resume with --resume (the same command plus --resume continues from the last checkpoint)' \
        if fn is train else ''
    main_pid = os.getpid()

    def stop(signum, frame) -> None:
        # NOTE: the process ends here, as with the default SIGTERM action, rather than by raising: an exception
        # raised while a DataLoader forks its workers is swallowed by the fork hooks and the run went on. Data
        # workers (forked with this handler) leave quietly; the main process names the signal once.
        if os.getpid() == main_pid:
            import multiprocessing
            print(f'error: stopped by {signal.Signals(signum).name}{resume}', file=sys.stderr, flush=True)
            sys.stdout.flush()
            for child in multiprocessing.active_children():
                child.terminate()
        os._exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop) if single else None
    try:
        rc = run_cli(fn, args)
    except KeyboardInterrupt:
        if not single:
            raise
        print(f'error: stopped by SIGINT{resume}', file=sys.stderr, flush=True)
        rc = 128 + int(signal.SIGINT)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        distributed = torch_dist.is_available() and torch_dist.is_initialized()
        if distributed:
            torch_dist.destroy_process_group()
    if distributed and getattr(args, 'launcher', 'none') != 'none':
        # NOTE: a worker process under torchrun can still abort in the C++ static destructors at interpreter exit
        # ("terminate called without an active exception", SIGABRT) after a successful run, seen about once in six
        # 2-process CPU runs on a loaded machine, which the agent then reports as a failed job. Everything the run
        # writes is flushed and fsynced by now, so the worker leaves without those destructors.
        import logging as _logging
        _logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``tools/train.py``."""
    return _run_cli(train, parse_train_args(argv))


def test_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``tools/test.py``."""
    return _run_cli(test, parse_test_args(argv))
