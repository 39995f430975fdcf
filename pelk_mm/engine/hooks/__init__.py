from .bn_stats_sync_hook import BNStatsSyncHook
from .non_finite_guard_hook import NonFiniteGuardHook
from .resume_changes_hook import ResumeChangesHook
from .resume_state_hook import ResumeStateHook
from .sparsity_hook import DynamicSparsityHook

__all__ = ['BNStatsSyncHook', 'DynamicSparsityHook', 'NonFiniteGuardHook', 'ResumeChangesHook', 'ResumeStateHook']
