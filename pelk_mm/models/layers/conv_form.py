"""Large-kernel conv forms: the registered modules a PeLK block's token mixer is built from.

A *conv form* is a depthwise, stride-1, "same"-padded large-kernel module registered in pelk_mm's ``MODELS``
registry and derived from :class:`LargeKernelConv`. pelk_mm registers three, each under its class name and a short
name (the backbone's ``conv_type``):

==============  ===========================  ======================================================
``conv_type``   class                        its own arguments (besides the common ones below)
==============  ===========================  ======================================================
``peripheral``  ``PeripheralConv2d``         ``center_size``, ``base``, ``half_grid``, ``conv_impl``
``dense``       ``DenseLargeKernelConv2d``   ``conv_impl``
``stripe``      ``StripeConv2d``             ``stripe_width``
==============  ===========================  ======================================================

Every form takes the common arguments ``channels``, ``kernel_size``, ``small_kernel``, ``kpe_mode``, ``norm_cfg``
and ``deploy``, and is called as ``form(x, kpe=None)``. :func:`build_conv_form` passes a form only the arguments
its ``__init__`` names: an argument it does not take is one ``ValueError`` naming the form and the argument.

A new form plugs in by subclassing :class:`LargeKernelConv` and registering it::

    @MODELS.register_module(name=['MyConv2d', 'my_conv'])
    class MyConv2d(LargeKernelConv):
        def __init__(self, channels, kernel_size, small_kernel=5, kpe_mode=None, norm_cfg=dict(type='BN'),
                     deploy=False, my_arg=1, init_cfg=None): ...

after which ``PeLK(conv_type='my_conv', conv_cfg=dict(my_arg=2))`` builds it in every block.
"""
from __future__ import annotations

import inspect
from typing import Dict, FrozenSet, List, Optional, Type

import torch
from mmengine.model import BaseModule

from pelk_mm.registry import MODELS

__all__ = ['LargeKernelConv', 'COMMON_ARGS', 'conv_form_class', 'conv_form_args', 'conv_forms', 'build_conv_form',
           'form_args_of']

#: arguments every conv form takes (the backbone always passes them)
COMMON_ARGS = ('channels', 'kernel_size', 'small_kernel', 'kpe_mode', 'norm_cfg', 'deploy')


class LargeKernelConv(BaseModule):
    """Base class of the large-kernel conv forms (see the module docstring for the interface).

    A subclass sets ``channels``, ``kernel_size``, ``small_kernel``, ``kpe_mode`` and ``deployed``, and implements
    ``forward(x, kpe=None)``, :meth:`dense_weight`, :attr:`num_params_per_channel` and ``switch_to_deploy(kpe=None)``.
    """

    channels: int
    kernel_size: int
    small_kernel: Optional[int]
    kpe_mode: Optional[str]
    deployed: bool

    @property
    def num_params_per_channel(self) -> int:
        """Large-kernel parameters per channel (without the small-kernel branch)."""
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor:
        """The dense ``(C, 1, K, K)`` kernel the form's large-kernel weights stand for."""
        raise NotImplementedError

    def switch_to_deploy(self, kpe: Optional[torch.Tensor] = None) -> None:
        """Convert in place to the deploy form (eval-mode outputs unchanged)."""
        raise NotImplementedError


def conv_form_class(conv_type: str) -> Type[LargeKernelConv]:
    """The registered conv form named ``conv_type`` (short or class name)."""
    cls = MODELS.get(conv_type) if isinstance(conv_type, str) else None
    if not (isinstance(cls, type) and issubclass(cls, LargeKernelConv)):
        raise ValueError(f'conv_type={conv_type!r} is not a registered large-kernel conv form; use one of '
                         f'{conv_forms()} or register a LargeKernelConv subclass in pelk_mm.registry.MODELS')
    return cls


def conv_form_args(cls: Type[LargeKernelConv]) -> FrozenSet[str]:
    """The keyword arguments the conv form ``cls`` takes (``init_cfg`` excluded)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return frozenset(p.name for p in params if p.name not in ('self', 'init_cfg')
                     and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


def conv_forms() -> List[str]:
    """Short names of the registered conv forms (the lower-case aliases), sorted."""
    names = [name for name, cls in MODELS.module_dict.items()
             if isinstance(cls, type) and issubclass(cls, LargeKernelConv) and name.islower()]
    return sorted(names)


def build_conv_form(conv_type: str, channels: int, **kwargs) -> LargeKernelConv:
    """Build the conv form ``conv_type`` for ``channels`` channels with exactly ``kwargs``.

    Raises:
        ValueError: ``conv_type`` is not a conv form, or ``kwargs`` holds an argument the form does not take
            (one line naming the form, the argument and the form's arguments).
    """
    cls = conv_form_class(conv_type)
    accepted = conv_form_args(cls)
    for name in kwargs:
        if name not in accepted:
            own = sorted(accepted - set(COMMON_ARGS))
            raise ValueError(f'conv_type={conv_type!r} ({cls.__name__}) takes no argument {name!r}; its own '
                             f'arguments are {own} besides the common {list(COMMON_ARGS[1:])}')
    return cls(channels, **kwargs)


def form_args_of(conv_type: str, candidates: Dict[str, tuple]) -> Dict[str, object]:
    """Of ``candidates`` ``{argument: (value, setting)}``, the values the form ``conv_type`` takes.

    ``setting`` names where the user set the value (e.g. ``'half_grids'``), or is ``None`` for a default; a value
    the user set for an argument the form does not take is a ``ValueError`` naming the form and the setting.
    """
    cls = conv_form_class(conv_type)
    accepted = conv_form_args(cls)
    out = {}
    for name, (value, setting) in candidates.items():
        if name in accepted:
            out[name] = value
        elif setting is not None:
            raise ValueError(f'conv_type={conv_type!r} ({cls.__name__}) takes no {name!r}, but {setting} sets it; '
                             f'drop {setting.split("=")[0]} for this conv form')
    return out
