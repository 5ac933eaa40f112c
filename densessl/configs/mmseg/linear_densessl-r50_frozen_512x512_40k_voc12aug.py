# Pascal VOC 2012 + SBD aug: LinearHead (BN -> dropout -> 1x1 conv) on all four stages resize-concatenated; frozen
# backbone (linear evaluation); 40k iterations at 512x512.
# Weights: --cfg-options model.backbone.weights=runs/<run> (a densessl/timm resnet50 state_dict).
_base_ = [
    './_base_/models/linear_densessl.py',
    './_base_/datasets/voc12aug.py',
    './_base_/default_runtime.py',
    './_base_/schedules/schedule_40k.py',
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(frozen=True),
    decode_head=dict(num_classes=21))
