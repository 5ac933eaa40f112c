# CPU-sized: UPerNet on a fine-tuned densessl ResNet-18, embedded synthetic scenes (7 classes), 128 px, 300
# iterations. BN instead of SyncBN, narrower heads; rendered PNGs are cached in
# ~/.cache/densessl/synthetic_seg.
_base_ = [
    './_base_/models/upernet_densessl.py',
    './_base_/datasets/synthetic.py',
    './_base_/default_runtime.py',
    './_base_/schedules/schedule_300it.py',
]
crop_size = (128, 128)
data_preprocessor = dict(size=crop_size)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(arch='resnet18', frozen=False),
    decode_head=dict(in_channels=[64, 128, 256, 512], channels=128, num_classes=7, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=64, num_classes=7, norm_cfg=norm_cfg))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
