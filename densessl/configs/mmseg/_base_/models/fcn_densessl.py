# FCN on an OS-8 dilated densessl ResNet-50 (mmseg's fcn_r50-d8 layout): timm builds the dilated network with
# model_kwargs=dict(output_stride=8), which keeps the parameter shapes, so the same export loads.
# Difference from mmseg's fcn_r50-d8: timm's ResNet-50 has the plain 7x7 stem, not ResNetV1c's deep stem.
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='DenseSSLBackbone',
        arch='resnet50',
        levels=(-4, -3, -2, -1),
        weights=None,
        frozen=False,
        norm_eval=False,
        model_kwargs=dict(output_stride=8)),
    decode_head=dict(
        type='FCNHead',
        in_channels=2048,
        in_index=3,
        channels=512,
        num_convs=2,
        concat_input=True,
        dropout_ratio=0.1,
        num_classes=21,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=1024,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=21,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
