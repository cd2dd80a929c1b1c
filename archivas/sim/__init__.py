"""The deterministic simulator: many real nodes in one process, on one simulated clock.

Modules:
    clock    HeapClock, the simulation's IReactorTime (a heap of delayed calls)
    network  SimNetwork, SimHost, SimTransport: TCP between simulated hosts (latency,
             bandwidth, loss, partitions, flow control) under real Twisted protocols
"""
