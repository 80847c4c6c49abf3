"""Every training loss, in one place (like open_clip's ``loss.py``), one module per kind:

- ``metric``: triplet loss with online semi-hard / batch-hard mining (FaceNet);
- ``ranking``: bidirectional max-margin ranking with top-K violating negatives (two-branch);
- ``contrastive``: bidirectional InfoNCE (ConVIRT) and in-batch softmax (Unified Embedding towers);
- ``compat``: backward-compatible training terms (BCT influence loss, BT², OCA).
"""
