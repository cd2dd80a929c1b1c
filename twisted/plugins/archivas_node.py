from twisted.application.service import ServiceMaker

archivas_node = ServiceMaker(
    "Archivas node", "archivas.tap", "An Archivas Proof-of-Space-and-Time node.", "archivas-node"
)
