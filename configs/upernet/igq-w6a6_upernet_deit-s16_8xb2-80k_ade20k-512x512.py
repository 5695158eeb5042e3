_base_ = './igq-w4a4_upernet_deit-s16_8xb2-80k_ade20k-512x512.py'
model = dict(backbone=dict(quant=dict(w_bits=6, a_bits=6)))
