"""The deterministic simulator: many real nodes in one process, on one simulated clock.

Modules:
    clock     HeapClock, the simulation's IReactorTime (a heap of delayed calls)
    network   SimNetwork, SimHost, SimTransport: TCP between simulated hosts (latency,
              bandwidth, loss, partitions, flow control) under real Twisted protocols
    checker   validation: each proof verified once for real, each node charged its time
    farming   farmers and timelords: who wins each block, when, on which tip
    traffic   signed transfers from funded accounts at a steady rate
    actors    nodes that do not play fair (silent, hostile)
    run       one simulated network from set-up to figures (Simulation, SimConfig)
    cli       `archivas-sim`: options in, a table or JSON out
"""
