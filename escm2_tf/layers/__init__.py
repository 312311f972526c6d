"""The ESCM2 network's layers, built for throughput on CPUs.

``embedding``: ``FusedEmbedding``, all fields in one table. ``multitask``:
``MMoE`` and ``TaskTowers``, batched over experts and tasks. ``heads``:
``Heads``, the logits turned into the named outputs.
"""

from escm2_tf.layers.embedding import FusedEmbedding
from escm2_tf.layers.embedding import align_weights
from escm2_tf.layers.embedding import pool_segments
from escm2_tf.layers.heads import Heads
from escm2_tf.layers.multitask import MMoE
from escm2_tf.layers.multitask import TaskTowers
from escm2_tf.layers.multitask import offset_seed
from escm2_tf.layers.multitask import stacked_glorot
