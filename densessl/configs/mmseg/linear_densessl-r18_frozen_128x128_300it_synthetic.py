# CPU-sized: linear evaluation of a frozen densessl ResNet-18 on the embedded synthetic scenes (7 classes), 128 px,
# 300 iterations (a few minutes on 2 cores). BN instead of SyncBN; rendered PNGs are cached in
# ~/.cache/densessl/synthetic_seg.
_base_ = [
    './_base_/models/linear_densessl.py',
    './_base_/datasets/synthetic.py',
    './_base_/default_runtime.py',
    './_base_/schedules/schedule_300it.py',
]
crop_size = (128, 128)
data_preprocessor = dict(size=crop_size)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(arch='resnet18', frozen=True),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=7, norm_cfg=norm_cfg))
optimizer = dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=0.0001)
optim_wrapper = dict(optimizer=optimizer)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
