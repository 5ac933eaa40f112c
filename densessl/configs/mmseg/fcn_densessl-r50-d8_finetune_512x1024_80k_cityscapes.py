# Cityscapes: FCNHead (+ auxiliary FCNHead) on an OS-8 dilated ResNet-50; fine-tuned backbone and head; 80k iterations
# at 512x1024.
# Weights: --cfg-options model.backbone.weights=runs/<run> (a densessl/timm resnet50 state_dict).
_base_ = [
    './_base_/models/fcn_densessl.py',
    './_base_/datasets/cityscapes.py',
    './_base_/default_runtime.py',
    './_base_/schedules/schedule_80k.py',
]
crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(frozen=False),
    decode_head=dict(num_classes=19),
    auxiliary_head=dict(num_classes=19))
# Multi-GPU: convert the backbone's BatchNorm layers to SyncBN too (ignored on one device).
sync_bn = 'torch'
