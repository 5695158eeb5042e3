# The README's commands. Each target first brings up .venv (seconds when it exists).
PYTHON := .venv/bin/python
TASK ?= det
DETECTOR ?= mask-rcnn
PROTOCOL ?= backbone-neck
VARIANT ?= plain
MMDET_TOOLS = $(shell $(PYTHON) -c "import mmdet, os; print(os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'tools'))")
DEMO_CONFIGS := configs/demo
DATA := data/synthetic_coco

.PHONY: setup test test-slow demo demo-models demo-seg-models benchmark

setup:
	@bash tools/setup_env.sh

test: setup
	$(PYTHON) -m pytest

test-slow: setup
	$(PYTHON) -m pytest -m slow

# make demo: the detection demo (DETECTOR=mask-rcnn or cascade; PROTOCOL=full also
# quantizes the RPN and RoI heads); make demo TASK=seg: the segmentation demo (both
# UperNet models); VARIANT=pretrained-like: the models' channel-outlier stress variant.
demo: setup
	$(PYTHON) tools/demo.py --task $(TASK) --variant $(VARIANT) $(if $(filter det,$(TASK)),--model $(DETECTOR) --protocol $(PROTOCOL))

# Speed, calibration cost and memory of quantized vs float Mask R-CNN Swin-T (README,
# "Performance"): one <part>.json + <part>.md per part in work_dirs/benchmark/.
# BENCH_ARGS e.g. "--device cuda", "--parts inference,memory --images 2" or
# "--calib-image-size 400x608 --search exact naive".
benchmark: setup
	$(PYTHON) benchmarks/benchmark.py $(BENCH_ARGS)

# Train the demo Mask R-CNN from scratch on the synthetic data (CPU, 1 thread: 30 epochs
# on 400 images, ~40 min; a 15-epoch warm restart, ~20 min; 8 epochs on 2000 images,
# ~65 min), then the demo Cascade Mask R-CNN starting from it (2 epochs on 2000
# images, ~25 min), and export them to demo_models/ (float16 state dicts; sha256 kept
# in demo_models/SHA256SUMS).
demo-models: setup
	$(PYTHON) tools/make_synthetic_coco.py --out $(DATA) --seed 0 --num-train 400 \
		--num-val 100 --image-size 192 --skip-if-current
	$(PYTHON) tools/make_synthetic_coco.py --out $(DATA)_2k --seed 0 --num-train 2000 \
		--num-val 100 --image-size 192 --skip-if-current
	$(PYTHON) $(MMDET_TOOLS)/train.py $(DEMO_CONFIGS)/mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py \
		--work-dir work_dirs/demo_models/mask-rcnn
	$(PYTHON) $(MMDET_TOOLS)/train.py $(DEMO_CONFIGS)/mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco_restart.py \
		--work-dir work_dirs/demo_models/mask-rcnn-restart
	$(PYTHON) $(MMDET_TOOLS)/train.py $(DEMO_CONFIGS)/mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco_2k.py \
		--work-dir work_dirs/demo_models/mask-rcnn-2k
	$(PYTHON) $(MMDET_TOOLS)/train.py $(DEMO_CONFIGS)/cascade-mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py \
		--work-dir work_dirs/demo_models/cascade
	$(PYTHON) tools/export_checkpoint.py work_dirs/demo_models/mask-rcnn-2k/epoch_8.pth \
		demo_models/mask-rcnn_swin-demo.pth
	$(PYTHON) tools/export_checkpoint.py work_dirs/demo_models/cascade/epoch_2.pth \
		demo_models/cascade-mask-rcnn_swin-demo.pth
	cd demo_models && sha256sum *.pth > SHA256SUMS

# The segmentation demo's UperNet Swin and UperNet ViT, trained from scratch on the
# synthetic semantic shapes (CPU, 1 thread each: the Swin's first cycle and the ViT in
# parallel on 2 cores, about 50 min, then the Swin's second cycle, about 25 min;
# configs/demo_seg/README.md), exported to demo_models/ (float16 state dicts;
# sha256 in demo_models/SHA256SUMS).
SEG_DATA := data/synthetic_seg
SEG_CONFIGS := configs/demo_seg
MMSEG_TOOLS = $(shell $(PYTHON) -c "import mmseg, os; print(os.path.join(os.path.dirname(mmseg.__file__), '.mim', 'tools'))")
SEG_SWIN := upernet_swin-demo-p4-w4_synthetic-seg-128x128
SEG_VIT := upernet_vit-demo-p8-d128-l6_synthetic-seg-128x128
demo-seg-models: setup
	$(PYTHON) tools/make_synthetic_seg.py --out $(SEG_DATA) --seed 0 --num-train 400 \
		--num-val 100 --image-size 128 --skip-if-current
	$(PYTHON) tools/make_synthetic_seg.py --out $(SEG_DATA)_2k --seed 0 --num-train 2000 \
		--num-val 100 --image-size 128 --skip-if-current
	$(PYTHON) tools/make_synthetic_seg.py --out $(SEG_DATA)_holdout --seed 1 --num-train 1 \
		--num-val 100 --image-size 128 --skip-if-current
	OMP_NUM_THREADS=1 taskset -c 0 $(PYTHON) $(MMSEG_TOOLS)/train.py $(SEG_CONFIGS)/$(SEG_SWIN).py \
		--work-dir work_dirs/demo_seg_models/upernet_swin-demo > /dev/null & swin=$$!; \
	OMP_NUM_THREADS=1 taskset -c 1 $(PYTHON) $(MMSEG_TOOLS)/train.py $(SEG_CONFIGS)/$(SEG_VIT).py \
		--work-dir work_dirs/demo_seg_models/upernet_vit-demo > /dev/null && wait $$swin
	OMP_NUM_THREADS=1 $(PYTHON) $(MMSEG_TOOLS)/train.py $(SEG_CONFIGS)/$(SEG_SWIN)_restart.py \
		--work-dir work_dirs/demo_seg_models/upernet_swin-demo-restart > /dev/null
	$(PYTHON) tools/export_checkpoint.py work_dirs/demo_seg_models/upernet_swin-demo-restart/iter_10000.pth \
		demo_models/upernet_swin-demo.pth
	$(PYTHON) tools/export_checkpoint.py work_dirs/demo_seg_models/upernet_vit-demo/iter_10000.pth \
		demo_models/upernet_vit-demo.pth
	cd demo_models && sha256sum *.pth > SHA256SUMS
