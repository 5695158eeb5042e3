_base_ = './igq-w4a4_upernet_swin-t-p4-w7_8xb2-160k_ade20k-512x512.py'
model = dict(backbone=dict(quant=dict(w_bits=6, a_bits=6)))
