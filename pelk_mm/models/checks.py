"""Whether a checkpoint file fits a built model, checked before it is evaluated or analysed."""
from __future__ import annotations

import torch.nn as nn

from pelk_mm.checkpoint import check_checkpoint_fits, checkpoint_weights, load_checkpoint_file
from .layers.peripheral_conv import DeployFormMixin, check_state_dict_form

__all__ = ['check_model_checkpoint']


def check_model_checkpoint(model: nn.Module, path: str) -> None:
    """The checkpoint must be of the model's deploy form (else one :class:`~pelk_mm.errors.DeployFormError` line
    naming both forms and the converter), hold every weight in the right shape, and only finite values (else one
    :class:`~pelk_mm.errors.CheckpointLoadError` line)."""
    # NOTE: mapped, not read: only the model weights are looked at (not the optimizer state), and the caller reads
    # the file again to load it
    checkpoint = load_checkpoint_file(path, map_location='cpu', mmap=True)
    weights = checkpoint_weights(checkpoint)
    for name, module in model.named_modules():
        if isinstance(module, DeployFormMixin):
            check_state_dict_form(module, weights, f'{name}.' if name else '', *module.FORM_KEYS, module.deployed)
    check_checkpoint_fits(model, checkpoint, repr(path))
