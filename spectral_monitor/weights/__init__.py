"""Which weights are analysed and how each becomes matrices: layer selection, module types, sharded
(DTensor/FSDP) weights read whole.
"""
