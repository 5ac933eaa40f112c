# Pascal VOC 2012 + SBD aug: linear evaluation of a frozen densessl ViT-S/16 (LinearHead on the last four blocks'
# patch tokens, all stride 16, concatenated); 40k iterations at 512x512.
# Weights: --cfg-options model.backbone.weights=runs/<run> (a densessl/timm vit_small_patch16_224).
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
    backbone=dict(arch='vit_small_patch16_224', levels=(-4, -3, -2, -1), frozen=True),
    decode_head=dict(in_channels=[384, 384, 384, 384], num_classes=21))
