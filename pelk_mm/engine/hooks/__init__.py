from .non_finite_guard_hook import NonFiniteGuardHook, NonFiniteTrainingError
from .resume_state_hook import ResumeStateHook
from .sparsity_hook import DynamicSparsityHook

__all__ = ['DynamicSparsityHook', 'NonFiniteGuardHook', 'NonFiniteTrainingError', 'ResumeStateHook']
