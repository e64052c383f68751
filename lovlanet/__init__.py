"""LoVLANet — remote-sensing segmentation on neighborhood key–key attention (to come).

Will hold the RemoteCLIP text encoder (open_clip), the ViT-B/32 visual encoder (timm) with
:class:`kkattn.nn.NeighborhoodKKAttention` in every block, the SFF decoder, the CMFA head, the
losses, the LoveDA/GID data, and the training / evaluation / inference tools.
"""
