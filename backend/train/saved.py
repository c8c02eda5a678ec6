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


class SavedTensors:
    """Counts the storages autograd keeps for the backward pass while this context is open: each storage once,
    only while a tensor saved in it is alive (parameters left out; autocast's weight copies counted and also apart).

    ``bytes`` / ``copy_bytes``: what is held now; ``peak`` / ``peak_copies``: the most held at once."""

    def __init__(self, model):
        import torch

        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self._live: dict[int, list] = {}  # storage address -> [bytes, weight copy?, saved tensors alive]
        self.bytes = self.copy_bytes = self.peak = self.peak_copies = 0

    def __enter__(self) -> "SavedTensors":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, t):
        import weakref

        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in self._params:
            e = self._live.get(ptr)
            if e is None:
                e = self._live[ptr] = [st.nbytes(), is_weight_copy(t), 0]
                self.bytes += e[0]
                self.copy_bytes += e[0] if e[1] else 0
                if self.bytes > self.peak:
                    self.peak, self.peak_copies = self.bytes, self.copy_bytes
            e[2] += 1
            weakref.finalize(t, self._release, ptr, e)
        return t

    def _release(self, ptr: int, e: list) -> None:
        e[2] -= 1
        if e[2] == 0 and self._live.get(ptr) is e:
            del self._live[ptr]
            self.bytes -= e[0]
            self.copy_bytes -= e[0] if e[1] else 0
