"""The embedded demos of igq-plugin (not part of the quantization package).

- :mod:`igq_demo.synthetic_coco`, :mod:`igq_demo.synthetic_seg`: the seeded synthetic
  datasets (COCO instances; semantic label maps), :mod:`igq_demo.seg_dataset` the mmseg
  dataset class of the latter;
- :mod:`igq_demo.tasks`: the demo models, data and metrics of each task;
- :mod:`igq_demo.demo`: float vs every method on a demo model (``make demo``);
- :mod:`igq_demo.evaluation`: in-process test runs with MMEngine's Runner, and the
  studies' measurements (channel ranges, per-layer quantization errors);
- :mod:`igq_demo.fidelity`: the quantized outputs' distance from the float ones;
- :mod:`igq_demo.plots`: PNG plots (matplotlib).

Installed with the ``demo`` extra (``pip install -e .[demo]``), which brings matplotlib and
scikit-image; ``igq_plugin`` itself needs neither.
"""
