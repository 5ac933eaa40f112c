# ADE20K: FCNHead (+ auxiliary FCNHead) on an OS-8 dilated ResNet-50; fine-tuned backbone and head; 80k iterations at
# 512x512.
# Weights: --cfg-options model.backbone.weights=runs/<run> (a densessl/timm resnet50 state_dict).
_base_ = [
    './_base_/models/fcn_densessl.py',
    './_base_/datasets/ade20k.py',
    './_base_/default_runtime.py',
    './_base_/schedules/schedule_80k.py',
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(frozen=False),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150))
# Multi-GPU: convert the backbone's BatchNorm layers to SyncBN too (ignored on one device).
sync_bn = 'torch'
