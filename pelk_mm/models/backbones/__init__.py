from .pelk import PeLK, PeLKBlock, PeLKStage

__all__ = ['PeLK', 'PeLKBlock', 'PeLKStage']
