from .sparsity_hook import DynamicSparsityHook

__all__ = ['DynamicSparsityHook']
