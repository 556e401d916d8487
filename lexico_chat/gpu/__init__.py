"""Optional GPU path of the OMP: the fused Triton pursuit (``pursuit``) and the launch helpers shared with
the Triton decode attention (``runtime``).

Triton is an optional dependency (the ``gpu`` extra): nothing imports these modules until a CUDA tensor
qualifies (``lexico_chat.accel.triton_enabled``). The decode attention kernels live in
``lexico_chat.attention.triton_decode``.
"""
