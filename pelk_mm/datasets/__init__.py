"""Dataset helpers: synthetic demo datasets in the real ImageNet / ADE20K / COCO on-disk formats."""
from .demo_data import (ADE20K_DEMO_CLASSES, COCO_DEMO_CATEGORY_IDS, COCO_DEMO_CLASSES, DEFAULT_ROOT, DEMO_KINDS,
                        IMAGENET_DEMO_CLASSES, demo_data_dir, ensure_demo_data, is_complete, make_ade20k_demo,
                        make_coco_demo, make_demo_data, make_imagenet_demo)

__all__ = [
    'ADE20K_DEMO_CLASSES', 'COCO_DEMO_CATEGORY_IDS', 'COCO_DEMO_CLASSES', 'DEFAULT_ROOT', 'DEMO_KINDS',
    'IMAGENET_DEMO_CLASSES', 'demo_data_dir', 'ensure_demo_data', 'is_complete', 'make_ade20k_demo',
    'make_coco_demo', 'make_demo_data', 'make_imagenet_demo'
]
