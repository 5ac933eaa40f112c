# ADE20K: UPerHead (+ auxiliary FCNHead) on the stride 4/8/16/32 stages; frozen backbone, trained head; 160k
# iterations at 512x512.
# Weights: --cfg-options model.backbone.weights=runs/<run> (a densessl/timm resnet50 state_dict).
_base_ = [
    './_base_/models/upernet_densessl.py',
    './_base_/datasets/ade20k.py',
    './_base_/default_runtime.py',
    './_base_/schedules/schedule_160k.py',
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(frozen=True),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150))
