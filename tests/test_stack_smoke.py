"""The stack is real: compiled mmcv ops, mmdet and mmseg models, mmengine checkpoints."""
import torch
from torch import nn


def test_mmcv_compiled_ops_run():
    from mmcv.ops import RoIAlign, nms
    features = torch.arange(2 * 16 * 16, dtype=torch.float32).view(1, 2, 16, 16)
    rois = torch.tensor([[0, 0.0, 0.0, 8.0, 8.0], [0, 4.0, 4.0, 12.0, 12.0]])
    pooled = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2)(features, rois)
    assert pooled.shape == (2, 2, 2, 2) and pooled[1].mean() > pooled[0].mean()
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    kept, index = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert index.tolist() == [0, 2]


def test_mmdet_swin_mask_rcnn_builds_and_predicts():
    from mmdet.structures import DetDataSample
    from mmengine.hub import get_config
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    cfg = get_config('mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None  # random initialisation, nothing downloaded
    model = MODELS.build(cfg.model)
    model.eval()
    sample = DetDataSample(metainfo=dict(img_shape=(224, 224), ori_shape=(224, 224),
                                         scale_factor=(1.0, 1.0)))
    data = model.data_preprocessor(dict(inputs=[torch.randint(0, 255, (3, 224, 224),
                                                             dtype=torch.uint8)],
                                        data_samples=[sample]), False)
    with torch.no_grad():
        result = model(data['inputs'], data['data_samples'], mode='predict')[0]
    assert {'bboxes', 'scores', 'labels', 'masks'} <= set(result.pred_instances.keys())


def test_mmengine_checkpoint_roundtrip_under_torch_weights_only(tmp_path):
    import igq_plugin.mm  # noqa: F401  (registers the weights_only-safe local loader)
    from mmengine.model import BaseModel
    from mmengine.runner import Runner, load_checkpoint

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 1)

        def forward(self, inputs, mode='tensor'):
            out = self.layer(inputs)  # default_collate stacked them: [B, 2]
            return dict(loss=out.pow(2).mean()) if mode == 'loss' else out

    runner = Runner(
        model=Toy(), work_dir=str(tmp_path),
        train_dataloader=dict(dataset=[dict(inputs=torch.randn(2)) for _ in range(4)],
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=2, collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(logger=None), default_scope='mmengine')
    runner.train()
    restored = Toy()
    checkpoint = load_checkpoint(restored, str(tmp_path / 'epoch_1.pth'))
    assert 'message_hub' in checkpoint  # mmengine's own metadata came back too
    assert torch.equal(restored.layer.weight, runner.model.layer.weight)


def test_mmseg_builds_its_swin_backbone():
    import mmseg.models  # noqa: F401  (imports ftfy/regex at run time)
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    backbone = MODELS.build(dict(type='SwinTransformer', embed_dims=16, depths=[1, 1, 1, 1],
                                 num_heads=[1, 2, 2, 4], window_size=4))
    outs = backbone(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [16, 32, 64, 128]
