"""CUDA graphs for the torch backend (``cuda_graphs=True``): each network call captured once per
(input shape, stage) and replayed for every later call with that key.

A captured graph reads and writes fixed addresses, so every key owns static buffers: the image
batch ``x`` and the noise levels ``sigma`` are copied into them before a replay, and the result
is copied out of the graph's output after it (the next replay overwrites it). The sequence
follows torch's CUDA-graph notes: a few warm-up calls on a side stream first (they let cuDNN
pick its algorithms, torch.compile compile, and the caching allocator settle, none of which may
happen inside a capture), then the capture under ``torch.cuda.graph``, which gives the graph a
private memory pool. The solver's K x N network calls per solve then cost one copy in, one
replay and one copy out each, without per-kernel launch work on the CPU.

Each graph keeps its own pool (the documented safe default): memory grows with the number of
distinct (shape, stage) keys, K per image shape for the schedules here. torch is passed in, never
imported here, so that importing the runtime never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WARMUP_CALLS = 3


@dataclass
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph
    x: Any  # static input (B, C, H, W) float32
    sigma: Any  # static (B,) float32
    out: Any  # the graph's output, overwritten by every replay


class GraphCache:
    """``run(x, sigma, k)`` = ``net(x, full(sigma), k)`` through a CUDA graph captured per
    ``(x.shape, k)``; ``net(x, sigma, k)`` must take and return float32 CUDA tensors."""

    def __init__(self, torch, net, device, warmup: int = WARMUP_CALLS):
        if device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.torch, self.net, self.device, self.warmup = torch, net, device, int(warmup)
        self.graphs: dict[tuple, _Captured] = {}
        self.captures = 0
        self.replays = 0

    def run(self, x, sigma: float, k: int):
        key = (tuple(x.shape), int(k))
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(x, sigma, int(k))
        entry.x.copy_(x)
        entry.sigma.fill_(float(sigma))
        entry.graph.replay()
        self.replays += 1
        return entry.out.clone()

    def _capture(self, x, sigma: float, k: int) -> _Captured:
        torch = self.torch
        static_x = torch.empty_like(x, dtype=torch.float32)  # on x's device, the backend's
        static_x.copy_(x)
        static_sigma = torch.full((x.shape[0],), float(sigma), dtype=torch.float32, device=x.device)
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)  # x was written on the current stream
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.net(static_x, static_sigma, k)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device), torch.cuda.graph(graph):
            out = self.net(static_x, static_sigma, k)
        self.captures += 1
        return _Captured(graph, static_x, static_sigma, out)

    def describe(self) -> str:
        return f"{self.captures} CUDA graph(s) captured, {self.replays} replay(s)"
