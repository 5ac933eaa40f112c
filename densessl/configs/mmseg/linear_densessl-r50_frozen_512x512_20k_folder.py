# Your own data in densessl's folder layout (see _base_/datasets/folder.py): linear evaluation of a frozen densessl
# ResNet-50; 20k iterations at 512x512. Set the folder and the class count (lines of classes.txt), e.g.
#   --cfg-options train_dataloader.dataset.data_root=DIR val_dataloader.dataset.data_root=DIR \
#                 model.decode_head.num_classes=K model.backbone.weights=runs/<run>
_base_ = [
    './_base_/models/linear_densessl.py',
    './_base_/datasets/folder.py',
    './_base_/default_runtime.py',
    './_base_/schedules/schedule_20k.py',
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(frozen=True),
    decode_head=dict(num_classes=2))
