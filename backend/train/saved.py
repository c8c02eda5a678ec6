"""What autograd keeps for the backward pass: helpers for counting saved tensors (``saved_tensors_hooks``)."""
from __future__ import annotations


def is_weight_copy(t) -> bool:
    """A cast of a parameter (autocast's bf16 copy of a weight), seen through up to six view operations."""
    g = t.grad_fn
    for _ in range(6):
        if g is None:
            return False
        if g.name() == "ToCopyBackward0":
            return any(n is not None and "AccumulateGrad" in n.name() for n, _ in g.next_functions)
        if len(g.next_functions) != 1:
            return False
        g = g.next_functions[0][0]
    return False
