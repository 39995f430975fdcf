"""Analysis of a config's model: dense and non-zero complexity, effective receptive field, kernels, throughput.

* :mod:`~pelk_mm.analysis.builder`: the one model builder (config -> model for analysis) and the input images;
* :mod:`~pelk_mm.analysis.forward`: the one analysed forward pass that the counters and the benchmark run;
* :mod:`~pelk_mm.analysis.dense_complexity`: dense parameters / FLOPs (mmengine's jit FLOP analyzer);
* :mod:`~pelk_mm.analysis.nonzero_complexity`: non-zero parameters / MACs of sparse models (SLaK's way);
* :mod:`~pelk_mm.analysis.erf`: effective receptive field of the last stage;
* :mod:`~pelk_mm.analysis.kernels`: large kernels of a backbone and the parameters-vs-kernel-size curve;
* :mod:`~pelk_mm.analysis.throughput`: inference throughput.

``tools/analysis/`` holds the command lines over these modules.
"""
from .builder import (build_model, find_images, get_backbone, limit_mask_rois, load_cfg, load_image, load_weights,
                      norm_params)
from .dense_complexity import DEFAULT_SHAPES, analyze_config, analyze_model, format_table
from .forward import analysed_forward
from .nonzero_complexity import analyze_config_sparse, count_nonzero_macs, count_params, format_sparse_summary

__all__ = ['build_model', 'find_images', 'get_backbone', 'limit_mask_rois', 'load_cfg', 'load_image', 'load_weights',
           'norm_params', 'DEFAULT_SHAPES', 'analyze_config', 'analyze_model', 'format_table', 'analysed_forward',
           'analyze_config_sparse', 'count_nonzero_macs', 'count_params', 'format_sparse_summary']
