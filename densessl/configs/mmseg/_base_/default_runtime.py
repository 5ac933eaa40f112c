# Runtime shared by every densessl mmseg config (mmseg 1.x's default_runtime plus the densessl plugin import).
default_scope = 'mmseg'
# Registers DenseSSLBackbone, LinearHead, FolderSegDataset and SyntheticSegDataset (tools/finetune_seg.py adds it
# too, so configs written without it still work there).
custom_imports = dict(imports=['densessl.seg.mmseg_plugin'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
# Never point load_from at a densessl export: set model.backbone.weights (read by densessl, weights_only=True).
# load_from is only for full mmseg checkpoints written by these configs.
load_from = None
resume = False
tta_model = dict(type='SegTTAModel')
