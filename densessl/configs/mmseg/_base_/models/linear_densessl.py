# Linear evaluation (VICRegL protocol): a frozen densessl backbone + LinearHead (SyncBN -> Dropout2d -> 1x1 conv).
#
# Difference from VICRegL's mmseg configs: densessl backbones are timm models (plain ResNet-50 stem, no ResNetV1c deep
# stem), and the head reads the concatenation of all four stage outputs (strides 4/8/16/32) resized to stride 4
# ("resize_concat"), not a single map of an OS-8 dilated ResNet. A dilated timm ResNet is available with
# backbone.model_kwargs=dict(output_stride=8) (same weights; see the FCN configs).
# Set the weights with --cfg-options model.backbone.weights=runs/<run> (read by densessl).
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
        frozen=True),
    decode_head=dict(
        type='LinearHead',
        in_channels=[256, 512, 1024, 2048],
        in_index=[0, 1, 2, 3],
        input_transform='resize_concat',
        num_classes=21,
        dropout_ratio=0.1,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
